//! The price table behind `skyhaul plan`'s cost estimate: data, not code.
//!
//! The built-in table is `data/prices.toml`, embedded at build time so a binary copied to
//! a machine without network still plans; it names the date of its prices and their
//! sources. A user's file (`--prices FILE`, or the config key `prices`) is laid over it
//! key by key, so a negotiated rate is one line, not a copy of the table.

use crate::output::outln;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in table, as shipped.
pub const BUILT_IN: &str = include_str!("data/prices.toml");

/// Where the numbers come from, shown with every estimate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Meta {
    /// The date the prices were read from their sources.
    pub as_of: String,
    pub currency: String,
    pub source: String,
}

/// One provider's prices.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ProviderPrices {
    pub name: String,
    pub source: String,
    pub put_per_1000: f64,
    pub get_per_1000: f64,
    pub list_per_1000: f64,
    pub same_region_egress_per_gib: f64,
    pub same_continent_egress_per_gib: f64,
    pub other_continent_egress_per_gib: f64,
    pub internet_egress_per_gib: f64,
    /// Region name prefix → continent, for telling inter-region rates apart.
    #[serde(default)]
    pub continents: BTreeMap<String, String>,
}

impl ProviderPrices {
    /// The continent of `region`, by the longest prefix in the table.
    pub fn continent(&self, region: &str) -> Option<&str> {
        let region = region.to_ascii_lowercase();
        self.continents
            .iter()
            .filter(|(prefix, _)| region.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, c)| c.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Prices {
    pub meta: Meta,
    pub providers: BTreeMap<String, ProviderPrices>,
}

impl Prices {
    /// The built-in table with `override_file` (if any) laid over it.
    pub fn load(override_file: Option<&Path>) -> Result<Prices, String> {
        let mut table: toml::Table = BUILT_IN.parse().expect("the built-in price table parses");
        if let Some(path) = override_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the price file {}: {e} (check --prices or `skyhaul config get prices`)",
                    path.display()
                )
            })?;
            let over: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                format!(
                    "price file {}: {} (see `skyhaul prices` for the layout)",
                    path.display(),
                    e.message()
                )
            })?;
            merge(&mut table, over);
        }
        let what = override_file.map_or("the built-in price table".to_string(), |p| {
            format!("price file {}", p.display())
        });
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                format!(
                    "{what}: {} (a new provider needs every price; see `skyhaul prices`)",
                    e.message()
                )
            })
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderPrices> {
        self.providers.get(name)
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// `skyhaul prices`: the table in force, built-in or with the user's file laid over it.
pub fn show(flag: Option<&Path>) -> crate::exit::ExitCode {
    let file = match flag {
        Some(f) => Some(f.to_path_buf()),
        None => match crate::settings::load_config() {
            Ok(c) => c.prices(),
            Err(e) => {
                eprintln!("skyhaul: error: {}", e.message);
                return e.code;
            }
        },
    };
    let Some(file) = file else {
        crate::output::write_stdout(BUILT_IN);
        return crate::exit::ExitCode::Ok;
    };
    match Prices::load(Some(&file)) {
        Ok(p) => {
            outln!("# the built-in table with {} laid over it", file.display());
            crate::output::write_stdout(&toml::to_string(&p).expect("prices serialise"));
            crate::exit::ExitCode::Ok
        }
        Err(e) => {
            eprintln!("skyhaul: error: {e}");
            crate::exit::ExitCode::Usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_is_complete_and_dated() {
        let p = Prices::load(None).unwrap();
        assert!(p.meta.as_of.len() == 10 && p.meta.as_of.starts_with("20"));
        for name in ["aws", "gcp", "azure", "cloudflare"] {
            let pp = p.provider(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(pp.source.contains("https://"), "{name} names no source");
            assert!(pp.put_per_1000 > 0.0 && pp.get_per_1000 > 0.0);
        }
        assert_eq!(
            p.provider("aws").unwrap().continent("us-east-1"),
            Some("north-america")
        );
        assert_eq!(
            p.provider("aws").unwrap().continent("ap-southeast-2"),
            Some("oceania")
        );
        assert_eq!(
            p.provider("aws").unwrap().continent("ap-northeast-1"),
            Some("asia")
        );
        assert_eq!(
            p.provider("gcp").unwrap().continent("europe-west4"),
            Some("europe")
        );
        assert_eq!(
            p.provider("azure").unwrap().continent("westeurope"),
            Some("europe")
        );
        assert_eq!(p.provider("aws").unwrap().continent("mars-1"), None);
    }

    #[test]
    fn an_override_changes_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[providers.aws]\ninternet_egress_per_gib = 0.05\n").unwrap();
        let base = Prices::load(None).unwrap();
        let p = Prices::load(Some(&f)).unwrap();
        assert_eq!(p.provider("aws").unwrap().internet_egress_per_gib, 0.05);
        assert_eq!(
            p.provider("aws").unwrap().put_per_1000,
            base.provider("aws").unwrap().put_per_1000
        );
        assert_eq!(p.provider("gcp"), base.provider("gcp"));
    }

    #[test]
    fn bad_files_say_which_and_what() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[providers.new]\nput_per_1000 = 1\n").unwrap();
        let e = Prices::load(Some(&f)).unwrap_err();
        assert!(e.contains("p.toml") && e.contains("missing field"), "{e}");
        let e = Prices::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
        assert!(e.contains("nope.toml"), "{e}");
    }
}
