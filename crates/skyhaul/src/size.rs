//! Sizes on the command line: `512M`, `16MiB`, `1G`, `4096`.

use std::str::FromStr;

/// A byte count; K, M, G, T (with or without `i`/`B`) are binary multiples, as in rclone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (try 512M or 16MiB)"))?;
        let shift = match unit
            .trim()
            .to_ascii_uppercase()
            .trim_end_matches('B')
            .trim_end_matches('I')
        {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("'{s}': unknown unit (use K, M, G or T)")),
        };
        Ok(Size((value * (1u64 << shift) as f64) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("4096".parse::<Size>().unwrap().0, 4096);
        assert_eq!("16M".parse::<Size>().unwrap().0, 16 << 20);
        assert_eq!("16MiB".parse::<Size>().unwrap().0, 16 << 20);
        assert_eq!("1.5G".parse::<Size>().unwrap().0, 3 << 29);
        assert_eq!("2t".parse::<Size>().unwrap().0, 2 << 40);
        assert!("12X".parse::<Size>().is_err());
        assert!("M".parse::<Size>().is_err());
    }
}
