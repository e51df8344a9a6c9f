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
            let over: toml::Table = text.parse().map_err(|e| {
                format!(
                    "price file {}: {} (see `skyhaul prices` for the layout)",
                    path.display(),
                    crate::config::toml_error(&text, &e)
                )
            })?;
            check_overlay(&over).map_err(|e| {
                format!(
                    "price file {}: {e} (see `skyhaul prices` for the layout)",
                    path.display()
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

/// The keys of `[meta]` and of each `[providers.NAME]` ([`Meta`], [`ProviderPrices`]).
const META_KEYS: [&str; 3] = ["as_of", "currency", "source"];
const PROVIDER_KEYS: [&str; 10] = [
    "name",
    "source",
    "put_per_1000",
    "get_per_1000",
    "list_per_1000",
    "same_region_egress_per_gib",
    "same_continent_egress_per_gib",
    "other_continent_egress_per_gib",
    "internet_egress_per_gib",
    "continents",
];

/// A user's price file, checked before it is laid over the table: a misspelt key would
/// otherwise leave the list price in force while the plan says the file was used, and a
/// negative price would make a negative bill. Types are checked by the table's own parse.
fn check_overlay(over: &toml::Table) -> Result<(), String> {
    let unknown = |key: &str, valid: &[&str]| {
        format!("unknown key '{key}' (valid there: {})", valid.join(", "))
    };
    for (section, value) in over {
        let toml::Value::Table(table) = value else {
            return Err(if META_KEYS.contains(&section.as_str()) {
                format!("'{section}' belongs in the [meta] section")
            } else if PROVIDER_KEYS.contains(&section.as_str()) {
                format!("'{section}' belongs in a [providers.NAME] section")
            } else {
                format!("'{section}' must be a [{section}] section")
            });
        };
        match section.as_str() {
            "meta" => {
                for (key, value) in table {
                    if !META_KEYS.contains(&key.as_str()) {
                        return Err(unknown(&format!("meta.{key}"), &META_KEYS));
                    }
                    if key == "as_of" && !value.as_str().is_some_and(is_date) {
                        // TOML reads an unquoted date as a date, not as text.
                        let quote = match value.is_datetime() {
                            true => " (in quotes)",
                            false => "",
                        };
                        return Err(format!(
                            "meta.as_of = {value}: expected the prices' date as \"YYYY-MM-DD\"{quote}"
                        ));
                    }
                }
            }
            "providers" => {
                for (name, provider) in table {
                    let toml::Value::Table(fields) = provider else {
                        return Err(format!(
                            "'providers.{name}' must be a [providers.{name}] section"
                        ));
                    };
                    for (key, value) in fields {
                        let key_path = format!("providers.{name}.{key}");
                        if !PROVIDER_KEYS.contains(&key.as_str()) {
                            return Err(unknown(&key_path, &PROVIDER_KEYS));
                        }
                        let number = value.as_float().or(value.as_integer().map(|i| i as f64));
                        if number.is_some_and(|n| !(n >= 0.0 && n.is_finite())) {
                            return Err(format!(
                                "{key_path} = {value}: a price is a number, 0 or more"
                            ));
                        }
                    }
                }
            }
            _ => return Err(unknown(section, &["meta", "providers"])),
        }
    }
    Ok(())
}

/// `YYYY-MM-DD`, with a month and a day that can be.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u32>().ok())?
    };
    matches!(
        parts[..],
        [y, m, d] if num(y, 4).is_some()
            && num(m, 2).is_some_and(|m| (1..=12).contains(&m))
            && num(d, 2).is_some_and(|d| (1..=31).contains(&d))
    )
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

    /// The keys the overlay check knows are the table's own.
    #[test]
    fn overlay_keys_are_the_tables() {
        let table: toml::Table = BUILT_IN.parse().unwrap();
        let meta: Vec<&str> = table["meta"]
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(meta, META_KEYS);
        for (name, p) in table["providers"].as_table().unwrap() {
            let mut keys: Vec<&str> = p.as_table().unwrap().keys().map(String::as_str).collect();
            let mut want = PROVIDER_KEYS.to_vec();
            if !keys.contains(&"continents") {
                want.retain(|k| *k != "continents");
            }
            keys.sort();
            want.sort();
            assert_eq!(keys, want, "{name}");
        }
        assert!(check_overlay(&table).is_ok());
    }

    #[test]
    fn overlays_with_unknown_keys_negative_prices_or_bad_dates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        for (text, expect) in [
            (
                "[providers.aws]\ninternet_egres_per_gib = 0.01\n",
                "'providers.aws.internet_egres_per_gib'",
            ),
            (
                "[providers.aws]\ninternet_egress_per_gib = -1\n",
                "providers.aws.internet_egress_per_gib = -1",
            ),
            (
                "[providers.gcp]\nput_per_1000 = -0.5\n",
                "providers.gcp.put_per_1000 = -0.5",
            ),
            (
                "[providers.aws]\nput_per_1000 = nan\n",
                "providers.aws.put_per_1000 = nan",
            ),
            ("[meta]\nas_of = \"yesterday\"\n", "meta.as_of"),
            ("[meta]\nas_of = \"2025-13-01\"\n", "meta.as_of"),
            ("[meta]\ncurrenc = \"EUR\"\n", "'meta.currenc'"),
            ("[provider.aws]\nput_per_1000 = 1\n", "'provider'"),
            // The slips the audit saw: where a syntax error is, keys outside their section,
            // a date without quotes.
            ("[meta]\n[providers.aws\n", "line 2, column 15"),
            (
                "as_of = \"2025-01-15\"\n",
                "'as_of' belongs in the [meta] section",
            ),
            (
                "put_per_1000 = 1\n",
                "belongs in a [providers.NAME] section",
            ),
            ("[meta]\nas_of = 2025-01-15\n", "\"YYYY-MM-DD\" (in quotes)"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = Prices::load(Some(&f)).unwrap_err();
            assert!(e.contains("p.toml") && e.contains(expect), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        std::fs::write(
            &f,
            "[meta]\nas_of = \"2026-02-28\"\n[providers.aws]\nput_per_1000 = 0\n",
        )
        .unwrap();
        let p = Prices::load(Some(&f)).unwrap();
        assert_eq!(p.meta.as_of, "2026-02-28");
        assert_eq!(p.provider("aws").unwrap().put_per_1000, 0.0);
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
