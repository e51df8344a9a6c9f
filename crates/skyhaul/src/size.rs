//! Sizes on the command line (`512M`, `16MiB`, `1G`, `4096`) and rates (`500M`, `1Gbit`).

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

/// A rate in bytes per second. `500M` and `500M/s` are bytes with binary multiples, like
/// sizes (500 MiB/s); `100Mbit`, `1Gbit`, `1Gbps` are bits with decimal multiples, as
/// network links are quoted (1 Gbit/s = 125,000,000 bytes/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        let lower = t.to_ascii_lowercase();
        let bits = lower
            .strip_suffix("bit")
            .or_else(|| lower.strip_suffix("bps"));
        let bytes = match bits {
            Some(num) => {
                let split = num
                    .find(|c: char| !c.is_ascii_digit() && c != '.')
                    .unwrap_or(num.len());
                let (n, unit) = num.split_at(split);
                let scale = match unit.trim() {
                    "" => 1e0,
                    "k" => 1e3,
                    "m" => 1e6,
                    "g" => 1e9,
                    "t" => 1e12,
                    _ => return Err(format!("'{s}': unknown unit (try 500M for MiB/s or 1Gbit)")),
                };
                n.parse::<f64>()
                    .map(|n| n * scale / 8.0)
                    .map_err(|_| format!("'{s}' is not a rate (try 500M for MiB/s or 1Gbit)"))?
                    as u64
            }
            None => {
                t.parse::<Size>()
                    .map_err(|_| format!("'{s}' is not a rate (try 500M for MiB/s or 1Gbit)"))?
                    .0
            }
        };
        if bytes == 0 {
            return Err(format!(
                "'{s}': a rate must be more than 0 bytes per second"
            ));
        }
        Ok(Rate(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_in_bytes_and_bits() {
        assert_eq!("500M".parse::<Rate>().unwrap().0, 500 << 20);
        assert_eq!("1.5G/s".parse::<Rate>().unwrap().0, 3 << 29);
        assert_eq!("1Gbit".parse::<Rate>().unwrap().0, 125_000_000);
        assert_eq!("100Mbps".parse::<Rate>().unwrap().0, 12_500_000);
        assert_eq!("8000bit".parse::<Rate>().unwrap().0, 1000);
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert!("1Xbit".parse::<Rate>().is_err());
    }

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
