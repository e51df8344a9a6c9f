//! Prometheus text exposition (format 0.0.4), written by hand: a few counters and gauges do
//! not need a metrics library.

use std::fmt::Write;

/// Builds one `/metrics` page.
#[derive(Default)]
pub struct Page {
    text: String,
}

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Page {
    /// A metric without labels, with its help and type lines.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// The help and type lines of a family whose samples follow with [`Page::sample`].
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample with labels (values escaped as the format requires).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut p = Page::default();
        p.metric("a_total", "counter", "As.", 3.0);
        p.family("b", "gauge", "Bs.");
        p.sample("b", &[("worker", "h\"1\n")], 0.5);
        assert_eq!(
            p.finish(),
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Bs.\n# TYPE b gauge\nb{worker=\"h\\\"1\\n\"} 0.5\n"
        );
    }
}
