//! Which source objects a transfer selects: `--include`, `--exclude`, `--files-from`,
//! `--min-size`/`--max-size` and `--newer-than`/`--older-than`.
//!
//! Every rule looks at the key *relative to the source prefix* — the part that is appended
//! to the destination prefix — so that a filter means the same thing whatever the prefix
//! the transfer was started from, and the same on both sides of a `sync`.
//!
//! # The rules, in order
//!
//! An object is selected when **all** of these hold:
//!
//! 1. its key matches **no** `--exclude` (excludes always win, whatever their order on the
//!    command line);
//! 2. if any `--include` is given, its key matches **at least one** of them;
//! 3. if any `--files-from` is given, its key is one of the listed keys (exactly, no globs);
//! 4. its size is within `--min-size` and `--max-size` (both inclusive);
//! 5. its modification time is `>= --newer-than` and `< --older-than`. An object whose
//!    modification time is unknown is not selected by a time rule, since nothing proves it
//!    matches.
//!
//! Unlike rclone's first-match-wins filter lists, the order of the flags never matters:
//! that is easier to explain and impossible to get subtly wrong.
//!
//! # Glob patterns
//!
//! Keys use `/` as separator, whatever the platform.
//!
//! | pattern | matches |
//! |---|---|
//! | `*.tmp` | no `/` in it: the *base name* at any depth (`x.tmp`, `a/b/c.tmp`), as in rsync/rclone |
//! | `logs/*.gz` | contains `/`: the whole relative key (`logs/a.gz`, not `logs/2024/a.gz`, not `x/logs/a.gz`) |
//! | `logs/**` | `**` crosses `/`: everything under `logs/` |
//! | `**/cache/*` | `cache/x` and `a/b/cache/x` |
//! | `/*.tmp` | a leading `/` anchors to the top: `x.tmp` but not `a/x.tmp` |
//! | `cache/` | a trailing `/` means "everything under a directory of that name": `cache/x`, `a/cache/y/z` |
//! | `?`, `[a-z]`, `[!0-9]`, `{jpg,png}` | one character, a class, a negated class, alternatives |
//!
//! `*` and `?` never cross `/`. Matching is case-sensitive, as S3 keys are. Object stores
//! have no directories, so `--exclude logs` does not exclude `logs/a.txt` (it only excludes
//! objects whose base name is `logs`): write `logs/` or `logs/**`.
//!
//! # `--files-from`
//!
//! A plain text file of keys relative to the source prefix, one per line. Leading and
//! trailing whitespace (and a Windows `\r`) is trimmed, a leading `/` is removed, and blank
//! lines and lines starting with `#` are ignored. Several files add up. S3 Inventory reports
//! are CSV with URL-encoded keys and are not read directly: extract the key column first.
//!
//! # Deletions (`sync --delete`)
//!
//! A destination-only object is deleted only if [`Filter::may_delete`] says so: when its
//! relative key would have been selected *by name* (rules 1–3). So excluded keys are never
//! deleted, and with `--files-from` only listed keys can be. Size and time rules describe
//! the source objects to copy and are not applied to deletions: an old or small file at the
//! destination is not kept just because `--newer-than` or `--min-size` was given.

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use skyhaul_store::ObjectMeta;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A filter rule that could not be used; the message says which and why.
#[derive(Debug)]
pub enum FilterError {
    /// A glob that does not parse.
    Glob { pattern: String, message: String },
    /// A `--files-from` file that could not be read.
    FilesFrom {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A `--newer-than`/`--older-than` value that is neither an age nor a date.
    Time { value: String, message: String },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Glob { pattern, message } => {
                write!(f, "bad pattern '{pattern}': {message}")
            }
            FilterError::FilesFrom { path, error } => {
                write!(f, "cannot read --files-from {}: {error}", path.display())
            }
            FilterError::Time { value, message } => write!(
                f,
                "'{value}': {message} (use an age such as 7d, 12h, 30m, 90s, 2w, \
                 or a date such as 2024-05-01 or 2024-05-01T12:00:00Z)"
            ),
        }
    }
}

impl std::error::Error for FilterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FilterError::FilesFrom { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A compiled group of globs. Normally one [`GlobSet`], which matches all patterns in one
/// pass; should the combined set exceed the regex size limits (thousands of patterns), each
/// glob is matched on its own instead, so that `build` never fails after every pattern was
/// accepted one by one.
#[derive(Debug, Clone)]
enum Globs {
    Set(GlobSet),
    Each(Vec<GlobMatcher>),
}

impl Globs {
    fn new(globs: &[Glob]) -> Globs {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            set.add(g.clone());
        }
        match set.build() {
            Ok(set) => Globs::Set(set),
            Err(_) => Globs::Each(globs.iter().map(Glob::compile_matcher).collect()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Globs::Set(set) => set.is_empty(),
            Globs::Each(list) => list.is_empty(),
        }
    }

    fn is_match(&self, key: &str) -> bool {
        match self {
            Globs::Set(set) => set.is_match(key),
            Globs::Each(list) => list.iter().any(|m| m.is_match(key)),
        }
    }
}

impl Default for Globs {
    fn default() -> Self {
        Globs::Set(GlobSet::empty())
    }
}

/// Decides which source objects a transfer selects; see the [module docs](self) for the
/// rules. The default filter selects everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    includes: Globs,
    excludes: Globs,
    /// The excludes that end in `/**`, without it: a directory they match has every key
    /// under it excluded.
    whole_dir_excludes: Globs,
    files_from: Option<HashSet<String>>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    newer_than: Option<SystemTime>,
    older_than: Option<SystemTime>,
}

/// Collects filter rules; every pattern and file is checked as it is added, so that the
/// error names the flag the user got wrong.
#[derive(Debug, Clone, Default)]
pub struct FilterBuilder {
    includes: Vec<Glob>,
    excludes: Vec<Glob>,
    files_from: Option<HashSet<String>>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    newer_than: Option<SystemTime>,
    older_than: Option<SystemTime>,
}

impl FilterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Selects only keys matching this glob (or another `include`); repeatable.
    pub fn include(&mut self, glob: &str) -> Result<&mut Self, FilterError> {
        self.includes.push(compile(glob)?);
        Ok(self)
    }

    /// Never selects keys matching this glob, even if an include matches; repeatable.
    pub fn exclude(&mut self, glob: &str) -> Result<&mut Self, FilterError> {
        self.excludes.push(compile(glob)?);
        Ok(self)
    }

    /// Restricts the selection to the keys listed in `path`, one per line; repeatable (the
    /// lists add up).
    pub fn files_from(&mut self, path: &Path) -> Result<&mut Self, FilterError> {
        let text = std::fs::read_to_string(path).map_err(|error| FilterError::FilesFrom {
            path: path.to_path_buf(),
            error,
        })?;
        self.files_from
            .get_or_insert_with(HashSet::new)
            .extend(parse_key_list(&text));
        Ok(self)
    }

    /// Selects only objects of at least `bytes` bytes.
    pub fn min_size(&mut self, bytes: u64) -> &mut Self {
        self.min_size = Some(bytes);
        self
    }

    /// Selects only objects of at most `bytes` bytes.
    pub fn max_size(&mut self, bytes: u64) -> &mut Self {
        self.max_size = Some(bytes);
        self
    }

    /// Selects only objects modified at or after `t`.
    pub fn newer_than(&mut self, t: SystemTime) -> &mut Self {
        self.newer_than = Some(t);
        self
    }

    /// Selects only objects modified before `t`.
    pub fn older_than(&mut self, t: SystemTime) -> &mut Self {
        self.older_than = Some(t);
        self
    }

    pub fn build(self) -> Filter {
        let whole_dir: Vec<Glob> = self
            .excludes
            .iter()
            .filter_map(|g| g.glob().strip_suffix("/**"))
            .filter_map(|dir| glob_builder(dir).build().ok())
            .collect();
        Filter {
            includes: Globs::new(&self.includes),
            excludes: Globs::new(&self.excludes),
            whole_dir_excludes: Globs::new(&whole_dir),
            files_from: self.files_from,
            min_size: self.min_size,
            max_size: self.max_size,
            newer_than: self.newer_than,
            older_than: self.older_than,
        }
    }
}

impl Filter {
    /// True when the filter selects everything, so callers can skip it (and say nothing
    /// about filtering in reports).
    pub fn is_empty(&self) -> bool {
        self.includes.is_empty()
            && self.excludes.is_empty()
            && self.files_from.is_none()
            && self.min_size.is_none()
            && self.max_size.is_none()
            && self.newer_than.is_none()
            && self.older_than.is_none()
    }

    /// Whether the transfer copies this source object. `rel_key` is the key relative to the
    /// source prefix (what the destination key appends), `meta` its listing entry.
    pub fn selects(&self, rel_key: &str, meta: &ObjectMeta) -> bool {
        self.selects_name(rel_key) && self.selects_size(meta.size) && self.selects_time(meta)
    }

    /// Whether a copy of one object (no `-r`) takes `meta`: the rules look at its base name,
    /// the part a destination in directory form appends.
    pub fn selects_one(&self, meta: &ObjectMeta) -> bool {
        self.selects(skyhaul_location::key_basename(&meta.key), meta)
    }

    /// For `sync --delete`: whether a destination-only object may be deleted. Only keys
    /// the filter would have selected by name qualify, so excluded keys are never deleted;
    /// size and time rules are not applied (see the module docs).
    pub fn may_delete(&self, rel_key: &str) -> bool {
        self.selects_name(rel_key)
    }

    /// Whether an entry a listing could not include ([`skyhaul_store::Error::unlisted`]) is
    /// left out by name, so that it is no failure: a file whose key rules 1–3 reject, or a
    /// directory (`rel_key` ending in `/`) under which they provably reject every key. That
    /// takes an exclude ending in `/**` whose start matches the directory (`dir/`,
    /// `dir/**`, `**/cache/**`), or a `--files-from` that names nothing under it. Other
    /// excludes may reject some of its keys only, and an include cannot tell which of its
    /// keys it would select: where unsure, the entry fails, since a sync that took it for
    /// left out would delete the destination's copies of what it holds.
    pub fn leaves_out(&self, rel_key: &str) -> bool {
        let Some(dir) = rel_key.strip_suffix('/') else {
            return !self.selects_name(rel_key);
        };
        let unlisted = self
            .files_from
            .as_ref()
            .is_some_and(|keys| !keys.iter().any(|k| k.starts_with(rel_key)));
        // The directory, or one above it.
        let covered = dir
            .match_indices('/')
            .map(|(end, _)| &dir[..end])
            .chain([dir])
            .any(|d| self.whole_dir_excludes.is_match(d));
        covered || unlisted
    }

    fn selects_name(&self, rel_key: &str) -> bool {
        if self.excludes.is_match(rel_key) {
            return false;
        }
        if !self.includes.is_empty() && !self.includes.is_match(rel_key) {
            return false;
        }
        match &self.files_from {
            Some(keys) => keys.contains(rel_key),
            None => true,
        }
    }

    fn selects_size(&self, size: u64) -> bool {
        self.min_size.is_none_or(|min| size >= min) && self.max_size.is_none_or(|max| size <= max)
    }

    fn selects_time(&self, meta: &ObjectMeta) -> bool {
        if self.newer_than.is_none() && self.older_than.is_none() {
            return true;
        }
        let Some(mtime) = meta.mtime else {
            return false;
        };
        self.newer_than.is_none_or(|t| mtime >= t) && self.older_than.is_none_or(|t| mtime < t)
    }
}

/// Turns a user pattern into a glob over relative keys, following the table in the module
/// docs: a trailing `/` means "everything under", a leading `/` anchors, and a pattern with
/// no `/` otherwise matches the base name at any depth.
fn compile(pattern: &str) -> Result<Glob, FilterError> {
    let err = |message: &str| FilterError::Glob {
        pattern: pattern.to_string(),
        message: message.to_string(),
    };
    let (anchored, rest) = match pattern.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (dir, core) = match rest.strip_suffix('/') {
        Some(core) => (true, core),
        None => (false, rest),
    };
    if core.is_empty() {
        return Err(err("empty pattern"));
    }
    if core.starts_with('/') || core.ends_with('/') || core.contains("//") {
        return Err(err("empty path segment ('//')"));
    }
    let mut glob = String::with_capacity(core.len() + 6);
    if !anchored && !core.contains('/') {
        glob.push_str("**/");
    }
    glob.push_str(core);
    if dir {
        glob.push_str("/**");
    }
    glob_builder(&glob)
        .build()
        .map_err(|e| err(&e.kind().to_string()))
}

/// Globs over keys: `*` and `?` stay within one path segment, `\` escapes.
fn glob_builder(glob: &str) -> GlobBuilder<'_> {
    let mut builder = GlobBuilder::new(glob);
    builder.literal_separator(true).backslash_escape(true);
    builder
}

/// The keys of a `--files-from` file (see the module docs for the format).
fn parse_key_list(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.strip_prefix('/').unwrap_or(line).to_string())
        .filter(|key| !key.is_empty())
}

/// Parses a `--newer-than`/`--older-than` value: an age before `now` (`90s`, `30m`, `12h`,
/// `7d`, `2w`, combinations such as `1d12h`, decimals such as `1.5h`), or a date: RFC 3339
/// (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00+02:00`), `YYYY-MM-DD HH:MM:SS` or
/// `YYYY-MM-DD`. Dates without an offset are UTC, so the same command selects the same
/// objects on every machine. `m` is minutes; months and years are not accepted because
/// their length is ambiguous.
pub fn parse_age_or_time(s: &str, now: SystemTime) -> Result<SystemTime, FilterError> {
    let t = s.trim();
    let err = |message: &str| FilterError::Time {
        value: s.to_string(),
        message: message.to_string(),
    };
    if t.is_empty() {
        return Err(err("empty value"));
    }
    // A date starts with four digits and a dash; an age never does.
    if t.len() >= 5 && t.as_bytes()[..4].iter().all(u8::is_ascii_digit) && t.as_bytes()[4] == b'-' {
        return parse_date(t).map_err(|m| err(&m));
    }
    let age = parse_age(t).map_err(|m| err(&m))?;
    now.checked_sub(age)
        .ok_or_else(|| err("age reaches before the representable time range"))
}

/// A duration like `30s`, `1.5m`, `2h30m` or `7d` (units s, m, h, d, w; m is minutes).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() {
            return Err("not an age or a date".into());
        }
        let value: f64 = num.parse().map_err(|_| format!("bad number '{num}'"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "" => return Err(format!("'{num}' needs a unit (s, m, h, d or w)")),
            other => {
                return Err(format!(
                    "unknown unit '{other}' (use s, m, h, d or w; m is minutes)"
                ))
            }
        };
        total += value * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| "age out of range".into())
}

/// Parses the date forms of [`parse_age_or_time`] without a date library: the calendar
/// arithmetic is a dozen lines and the forms accepted are few.
fn parse_date(s: &str) -> Result<SystemTime, String> {
    let bad = || "not a valid date (YYYY-MM-DD or RFC 3339)".to_string();
    let num = |part: &str| -> Result<u32, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(mo), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (year, month, day) = (num(y)?, num(mo)?, num(d)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("no such day".into());
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    let mut nanos = 0u32;
    if let Some(time) = time {
        // Split off the offset: `Z`, or `+HH:MM`/`-HH:MM` after the clock time.
        let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (sign, hm) = (&time[i..i + 1], &time[i + 1..]);
            let (h, m) = hm.split_once(':').ok_or_else(bad)?;
            if h.len() != 2 || m.len() != 2 || num(h)? > 23 || num(m)? > 59 {
                return Err(bad());
            }
            let off = i64::from(num(h)? * 3600 + num(m)? * 60);
            (&time[..i], if sign == "+" { off } else { -off })
        } else {
            (time, 0)
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((_, "")) => return Err(bad()),
            Some(parts) => parts,
            None => (clock, ""),
        };
        let mut hms = hms.split(':');
        let (Some(h), Some(m), Some(sec), None) = (hms.next(), hms.next(), hms.next(), hms.next())
        else {
            return Err(bad());
        };
        if h.len() != 2 || m.len() != 2 || sec.len() != 2 {
            return Err(bad());
        }
        let (h, m, sec) = (num(h)?, num(m)?, num(sec)?);
        if h > 23 || m > 59 || sec > 60 {
            return Err("no such time of day".into());
        }
        if !frac.is_empty() {
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
            nanos = digits.parse().map_err(|_| bad())?;
        }
        secs += i64::from(h * 3600 + m * 60 + sec) - offset;
    }
    let since_epoch = Duration::new(secs.unsigned_abs(), 0);
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(since_epoch)
    } else {
        UNIX_EPOCH.checked_sub(since_epoch)
    };
    whole
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        .ok_or_else(|| "date out of range".into())
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta::new("ignored", size)
    }

    fn at(secs: u64, size: u64) -> ObjectMeta {
        let mut m = ObjectMeta::new("ignored", size);
        m.mtime = Some(UNIX_EPOCH + Duration::from_secs(secs));
        m
    }

    fn build(f: impl FnOnce(&mut FilterBuilder) -> Result<(), FilterError>) -> Filter {
        let mut b = FilterBuilder::new();
        f(&mut b).unwrap();
        b.build()
    }

    fn excludes(pattern: &str, key: &str) -> bool {
        !build(|b| b.exclude(pattern).map(|_| ())).selects(key, &meta(1))
    }

    fn includes(pattern: &str, key: &str) -> bool {
        build(|b| b.include(pattern).map(|_| ())).selects(key, &meta(1))
    }

    #[test]
    fn default_selects_everything() {
        let f = Filter::default();
        assert!(f.is_empty());
        assert!(f.selects("a/b/c", &meta(0)));
        assert!(f.selects("", &meta(u64::MAX)));
        assert!(f.may_delete("anything/at/all"));
        assert!(FilterBuilder::new().build().is_empty());
    }

    #[test]
    fn any_rule_makes_the_filter_non_empty() {
        let t = UNIX_EPOCH;
        let list = list_file("");
        let cases = [
            build(|b| b.include("*").map(|_| ())),
            build(|b| b.exclude("*").map(|_| ())),
            build(|b| b.files_from(list.path()).map(|_| ())),
            build(|b| {
                b.min_size(0);
                Ok(())
            }),
            build(|b| {
                b.max_size(1);
                Ok(())
            }),
            build(|b| {
                b.newer_than(t);
                Ok(())
            }),
            build(|b| {
                b.older_than(t);
                Ok(())
            }),
        ];
        for f in cases {
            assert!(!f.is_empty(), "{f:?}");
        }
    }

    #[test]
    fn an_unlisted_directory_is_left_out_only_when_everything_under_it_is() {
        let leaves_out =
            |pattern: &str, key: &str| build(|b| b.exclude(pattern).map(|_| ())).leaves_out(key);
        for pattern in [
            "lost+found/",
            "/lost+found/",
            "lost+found/**",
            "**/lost+found/**",
        ] {
            assert!(leaves_out(pattern, "lost+found/"), "{pattern}");
        }
        assert!(leaves_out("lost+found/", "a/lost+found/"));
        assert!(!leaves_out("/lost+found/", "a/lost+found/"), "anchored");
        assert!(leaves_out("**", "lost+found/"), "everything");
        assert!(leaves_out("lost+found/**", "lost+found/sub/"), "under it");
        // Patterns that reject some of its keys only, whatever their depth or names.
        for pattern in [
            "lost+found/*",
            "lost+found/?",
            "lost+found/**/[!.]*",
            "lost+found/**/*",
            "lost+found/*/**",
            "*.tmp",
            "lost+found",
            "other/",
        ] {
            assert!(!leaves_out(pattern, "lost+found/"), "{pattern}");
        }
        let depths = build(|b| {
            b.exclude("lost+found/*")?;
            b.exclude("lost+found/*/*/*")?;
            Ok(())
        });
        assert!(!depths.leaves_out("lost+found/"), "not at every depth");
        assert!(!Filter::default().leaves_out("lost+found/"));
        let only_jpg = build(|b| b.include("*.jpg").map(|_| ()));
        assert!(
            !only_jpg.leaves_out("d/"),
            "an include may select keys under it"
        );
        // Files are judged by their name, as deletions are.
        assert!(leaves_out("*.tmp", "a/\u{FFFD}.tmp"));
        assert!(!leaves_out("*.tmp", "a/\u{FFFD}.txt"));
        assert!(only_jpg.leaves_out("a/\u{FFFD}.txt"));

        let list = list_file("keep/a.txt\n");
        let listed = build(|b| b.files_from(list.path()).map(|_| ()));
        assert!(listed.leaves_out("locked/"));
        assert!(!listed.leaves_out("keep/"));
    }

    #[test]
    fn basename_patterns_match_at_any_depth() {
        assert!(excludes("*.tmp", "x.tmp"));
        assert!(excludes("*.tmp", "a/b/c.tmp"));
        assert!(!excludes("*.tmp", "a/b/c.tmp.gz"));
        assert!(!excludes("*.tmp", "a.tmp/c.txt"));
        assert!(excludes("data.csv", "data.csv"));
        assert!(excludes("data.csv", "deep/er/data.csv"));
        assert!(!excludes("data.csv", "olddata.csv"));
        // A "directory" name alone does not match the objects under it.
        assert!(!excludes("logs", "logs/a.txt"));
        assert!(excludes("logs", "x/logs"));
    }

    #[test]
    fn patterns_with_a_slash_match_the_whole_relative_key() {
        assert!(excludes("logs/*.gz", "logs/a.gz"));
        assert!(
            !excludes("logs/*.gz", "logs/2024/a.gz"),
            "* must not cross /"
        );
        assert!(!excludes("logs/*.gz", "x/logs/a.gz"), "anchored at the top");
        assert!(excludes("a/b/c.txt", "a/b/c.txt"));
        assert!(!excludes("a/b/c.txt", "z/a/b/c.txt"));
    }

    #[test]
    fn double_star_crosses_slashes() {
        assert!(excludes("logs/**", "logs/a"));
        assert!(excludes("logs/**", "logs/2024/01/a.gz"));
        assert!(!excludes("logs/**", "logs"));
        assert!(!excludes("logs/**", "other/logs/a"));
        assert!(excludes("**/cache/*", "cache/x"));
        assert!(excludes("**/cache/*", "a/b/cache/x"));
        assert!(!excludes("**/cache/*", "a/b/cache/x/y"));
        assert!(excludes("a/**/z.bin", "a/z.bin"));
        assert!(excludes("a/**/z.bin", "a/b/c/z.bin"));
        assert!(excludes("**", "anything/at/all"));
        assert!(excludes("*", "a/b"), "a lone * matches every base name");
    }

    #[test]
    fn leading_slash_anchors_to_the_top() {
        assert!(excludes("/*.tmp", "x.tmp"));
        assert!(!excludes("/*.tmp", "a/x.tmp"));
        assert!(excludes("/logs/**", "logs/a/b"));
    }

    #[test]
    fn trailing_slash_means_everything_under() {
        assert!(excludes("cache/", "cache/x"));
        assert!(excludes("cache/", "a/cache/y/z"));
        assert!(!excludes("cache/", "cache"));
        assert!(!excludes("cache/", "mycache/x"));
        assert!(excludes("a/cache/", "a/cache/x/y"));
        assert!(!excludes("a/cache/", "b/a/cache/x"));
        assert!(excludes("/cache/", "cache/x"));
        assert!(!excludes("/cache/", "a/cache/x"));
    }

    #[test]
    fn classes_alternatives_and_escapes() {
        assert!(excludes("part-?.bin", "d/part-1.bin"));
        assert!(!excludes("part-?.bin", "d/part-12.bin"));
        assert!(excludes("[a-c]*.txt", "b1.txt"));
        assert!(!excludes("[a-c]*.txt", "d1.txt"));
        assert!(excludes("[!0-9]*", "x9"));
        assert!(!excludes("[!0-9]*", "9x"));
        assert!(excludes("*.{jpg,png}", "img/a.png"));
        assert!(!excludes("*.{jpg,png}", "img/a.gif"));
        assert!(excludes(r"\*.txt", "*.txt"));
        assert!(!excludes(r"\*.txt", "a.txt"));
        assert!(!excludes("a?b", "a/b"), "? must not match /");
        assert!(excludes("a?b", "x/a-b"));
    }

    #[test]
    fn matching_is_case_sensitive_and_literal_elsewhere() {
        assert!(!excludes("*.JPG", "a.jpg"));
        assert!(excludes("a b+(c).txt", "dir/a b+(c).txt"));
        assert!(excludes("ünïcode/*", "ünïcode/ß"));
    }

    #[test]
    fn bad_patterns_are_errors_that_name_them() {
        for p in ["", "/", "//", "a//b", "[a-", "{a,b", "a/**/[", "dir//"] {
            let err = FilterBuilder::new().exclude(p).unwrap_err();
            assert!(err.to_string().contains(&format!("'{p}'")), "{p}: {err}");
            assert!(FilterBuilder::new().include(p).is_err(), "{p}");
        }
    }

    #[test]
    fn includes_restrict_and_any_of_them_selects() {
        assert!(includes("*.csv", "a/b.csv"));
        assert!(!includes("*.csv", "a/b.json"));
        let f = build(|b| b.include("*.csv")?.include("images/**").map(|_| ()));
        assert!(f.selects("x.csv", &meta(1)));
        assert!(f.selects("images/cat/1.jpg", &meta(1)));
        assert!(!f.selects("other/1.jpg", &meta(1)));
    }

    #[test]
    fn excludes_win_over_includes_in_any_order() {
        let a = build(|b| b.include("data/**")?.exclude("*.tmp").map(|_| ()));
        let b = build(|b| b.exclude("*.tmp")?.include("data/**").map(|_| ()));
        for f in [a, b] {
            assert!(f.selects("data/x.bin", &meta(1)));
            assert!(!f.selects("data/x.tmp", &meta(1)));
            assert!(!f.selects("other/x.bin", &meta(1)));
        }
        let f = build(|b| b.include("*.tmp")?.exclude("*.tmp").map(|_| ()));
        assert!(!f.selects("a.tmp", &meta(1)));
    }

    #[test]
    fn many_excludes_all_apply() {
        let f = build(|b| {
            for i in 0..500 {
                b.exclude(&format!("dir{i}/**"))?;
            }
            Ok(())
        });
        assert!(!f.selects("dir0/a", &meta(1)));
        assert!(!f.selects("dir499/a/b", &meta(1)));
        assert!(f.selects("dir500/a", &meta(1)));
    }

    fn list_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn files_from_selects_exactly_the_listed_keys() {
        let list = list_file(
            "# keys from the seed script\n\
             a/1.bin\r\n\
             \n\
             \t  a/2.bin  \n\
             /b/3.bin\n\
             with space/k*ey?.bin\n\
             #not/a/key\n",
        );
        let f = build(|b| b.files_from(list.path()).map(|_| ()));
        assert!(!f.is_empty());
        for key in ["a/1.bin", "a/2.bin", "b/3.bin", "with space/k*ey?.bin"] {
            assert!(f.selects(key, &meta(1)), "{key}");
        }
        for key in [
            "a/1",
            "a/1.bin.x",
            "a",
            "#not/a/key",
            "with space/kXey?.bin",
            "",
        ] {
            assert!(!f.selects(key, &meta(1)), "{key}");
        }
    }

    #[test]
    fn several_files_from_add_up_and_combine_with_globs() {
        let one = list_file("a.bin\nb.tmp\n");
        let two = list_file("c.bin\n");
        let f = build(|b| {
            b.files_from(one.path())?
                .files_from(two.path())?
                .exclude("*.tmp")
                .map(|_| ())
        });
        assert!(f.selects("a.bin", &meta(1)));
        assert!(f.selects("c.bin", &meta(1)));
        assert!(!f.selects("b.tmp", &meta(1)), "excluded though listed");
        assert!(!f.selects("d.bin", &meta(1)));
    }

    #[test]
    fn empty_files_from_selects_nothing() {
        let list = list_file("# nothing\n\n");
        let f = build(|b| b.files_from(list.path()).map(|_| ()));
        assert!(!f.selects("a", &meta(1)));
        assert!(!f.may_delete("a"));
    }

    #[test]
    fn missing_files_from_is_an_error_with_the_path() {
        let err = FilterBuilder::new()
            .files_from(Path::new("/nonexistent/skyhaul/keys.txt"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/skyhaul/keys.txt"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn size_bounds_are_inclusive() {
        let f = build(|b| {
            b.min_size(10).max_size(20);
            Ok(())
        });
        assert!(!f.selects("k", &meta(9)));
        assert!(f.selects("k", &meta(10)));
        assert!(f.selects("k", &meta(20)));
        assert!(!f.selects("k", &meta(21)));
        let only_min = build(|b| {
            b.min_size(1);
            Ok(())
        });
        assert!(!only_min.selects("k", &meta(0)));
        assert!(only_min.selects("k", &meta(u64::MAX)));
        let only_max = build(|b| {
            b.max_size(0);
            Ok(())
        });
        assert!(only_max.selects("k", &meta(0)));
        assert!(!only_max.selects("k", &meta(1)));
    }

    #[test]
    fn time_bounds_newer_inclusive_older_exclusive() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let f = build(|b| {
            b.newer_than(t(100)).older_than(t(200));
            Ok(())
        });
        assert!(!f.selects("k", &at(99, 1)));
        assert!(f.selects("k", &at(100, 1)));
        assert!(f.selects("k", &at(199, 1)));
        assert!(!f.selects("k", &at(200, 1)));
        let newer = build(|b| {
            b.newer_than(t(100));
            Ok(())
        });
        assert!(newer.selects("k", &at(1_000_000, 1)));
        let older = build(|b| {
            b.older_than(t(100));
            Ok(())
        });
        assert!(older.selects("k", &at(0, 1)));
        assert!(!older.selects("k", &at(100, 1)));
    }

    #[test]
    fn unknown_mtime_fails_time_rules_only() {
        let no_time = meta(5);
        assert!(!build(|b| {
            b.newer_than(UNIX_EPOCH);
            Ok(())
        })
        .selects("k", &no_time));
        assert!(!build(|b| {
            b.older_than(SystemTime::now());
            Ok(())
        })
        .selects("k", &no_time));
        assert!(build(|b| {
            b.min_size(5);
            Ok(())
        })
        .selects("k", &no_time));
    }

    #[test]
    fn all_rules_combine() {
        let list = list_file("keep/a.bin\nkeep/b.bin\nkeep/c.tmp\nkeep/d.bin\nother/e.bin\n");
        let f = build(|b| {
            b.include("keep/**")?
                .exclude("*.tmp")?
                .files_from(list.path())?
                .min_size(10)
                .max_size(100)
                .newer_than(UNIX_EPOCH + Duration::from_secs(1000));
            Ok(())
        });
        assert!(f.selects("keep/a.bin", &at(1000, 10)));
        assert!(!f.selects("keep/b.bin", &at(1000, 9)), "too small");
        assert!(!f.selects("keep/b.bin", &at(999, 50)), "too old");
        assert!(!f.selects("keep/c.tmp", &at(2000, 50)), "excluded");
        assert!(!f.selects("other/e.bin", &at(2000, 50)), "not included");
        assert!(!f.selects("keep/z.bin", &at(2000, 50)), "not listed");
    }

    #[test]
    fn deletion_uses_names_only_and_never_excluded_keys() {
        let f = build(|b| {
            b.include("data/**")?
                .exclude("*.keep")?
                .min_size(1000)
                .newer_than(SystemTime::now());
            Ok(())
        });
        assert!(
            f.may_delete("data/old-and-small.bin"),
            "size/time not applied"
        );
        assert!(
            !f.may_delete("data/x.keep"),
            "excluded keys are never deleted"
        );
        assert!(
            !f.may_delete("outside/x.bin"),
            "not included: not ours to delete"
        );

        let list = list_file("a\nb\n");
        let f = build(|b| b.files_from(list.path()).map(|_| ()));
        assert!(f.may_delete("a"));
        assert!(!f.may_delete("c"), "only listed keys may be deleted");
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ago(s: &str) -> u64 {
        now()
            .duration_since(parse_age_or_time(s, now()).unwrap())
            .unwrap()
            .as_secs()
    }

    #[test]
    fn ages_count_back_from_now() {
        assert_eq!(ago("90s"), 90);
        assert_eq!(ago("30m"), 1800);
        assert_eq!(ago("12h"), 43_200);
        assert_eq!(ago("7d"), 604_800);
        assert_eq!(ago("2w"), 1_209_600);
        assert_eq!(ago("1d12h"), 129_600);
        assert_eq!(ago("1.5h"), 5400);
        assert_eq!(ago(" 0s "), 0);
    }

    #[test]
    fn bad_ages_are_errors_with_a_hint() {
        for s in [
            "",
            "7",
            "d",
            "7x",
            "7M",
            "7y",
            "-7d",
            "7d-",
            "1..5h",
            "seven days",
        ] {
            let err = parse_age_or_time(s, now()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("7d") && msg.contains("2024-05-01"),
                "{s}: {msg}"
            );
        }
        assert!(parse_age_or_time("100000000000000w", UNIX_EPOCH).is_err());
    }

    fn unix(s: &str) -> i64 {
        let t = parse_age_or_time(s, now()).unwrap();
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn dates_are_utc_unless_an_offset_is_given() {
        assert_eq!(unix("1970-01-01"), 0);
        assert_eq!(unix("2024-05-01"), 1_714_521_600);
        assert_eq!(unix("2024-05-01T12:00:00Z"), 1_714_564_800);
        assert_eq!(unix("2024-05-01t12:00:00z"), 1_714_564_800);
        assert_eq!(unix("2024-05-01 12:00:00"), 1_714_564_800);
        assert_eq!(unix("2024-05-01T14:00:00+02:00"), 1_714_564_800);
        assert_eq!(unix("2024-05-01T07:30:00-04:30"), 1_714_564_800);
        assert_eq!(unix("2000-02-29"), 951_782_400);
        assert_eq!(unix("1969-12-31"), -86_400);
        let frac = parse_age_or_time("2024-05-01T12:00:00.25Z", now()).unwrap();
        assert_eq!(
            frac.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_714_564_800, 250_000_000)
        );
    }

    #[test]
    fn bad_dates_are_errors() {
        for s in [
            "2024-13-01",
            "2023-02-29",
            "2024-04-31",
            "2024-00-10",
            "2024-5-1",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T12:00:00+2",
            "2024-05-01T12:00:00.Z",
            "2024-05-01X",
            "2024-05-01-01",
        ] {
            assert!(parse_age_or_time(s, now()).is_err(), "{s}");
        }
    }
}
