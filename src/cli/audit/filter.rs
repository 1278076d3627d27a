//! `--path`, `--principal`, `--since` and `--until`.

use std::path::{Component, Path, PathBuf};

use super::time::Window;
use super::trail::Event;

/// Which events to show.
#[derive(Debug, Default)]
pub struct Filter {
    /// Plain path prefix, from the root, matched on whole components.
    path: Option<PathBuf>,
    /// Substring of the principal.
    principal: Option<String>,
    /// The time window.
    window: Window,
}

impl Filter {
    /// The filter from the command line; a usage message when an argument is wrong.
    pub fn new(
        path: Option<&Path>,
        principal: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Filter, String> {
        let path = match path {
            Some(p) => {
                if p.components().any(|c| c == Component::ParentDir) {
                    return Err(format!("--path {}: \"..\" is not allowed", p.display()));
                }
                // With or without the leading '/': the vault root is '/'.
                Some(Path::new("/").join(p))
            }
            None => None,
        };
        Ok(Filter {
            path,
            principal: principal.map(str::to_string),
            window: Window::parse(since, until)?,
        })
    }

    /// Whether `e` passes `--principal`, `--since` and `--until`.
    pub fn keeps_event(&self, e: &Event) -> bool {
        self.window.contains(e.time)
            && self
                .principal
                .as_deref()
                .is_none_or(|p| e.principal.contains(p))
    }

    /// Whether an event about plain path `plain` (`None`: no file path) passes `--path`.
    pub fn keeps_path(&self, plain: Option<&Path>) -> bool {
        match (&self.path, plain) {
            (None, _) => true,
            (Some(prefix), Some(p)) => crate::cli::walk::is_under(p, prefix),
            (Some(_), None) => false,
        }
    }

    /// Whether `--path` was given.
    pub fn has_path(&self) -> bool {
        self.path.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::audit::time::Timestamp;
    use crate::cli::audit::trail::Target;

    fn event(principal: &str, time: &str) -> Event {
        Event {
            time: Timestamp::parse_rfc3339(time).expect("time"),
            time_text: time.into(),
            principal: principal.into(),
            operation: "Decrypt".into(),
            result: "ok".into(),
            region: "eu-west-1".into(),
            source_ip: String::new(),
            target: Target::File(String::new()),
            key_arn: String::new(),
        }
    }

    #[test]
    fn path_prefixes_match_whole_components() {
        for prefix in ["finance", "/finance", "/finance/", "finance/q3", "/"] {
            let f = Filter::new(Some(Path::new(prefix)), None, None, None).expect("filter");
            assert!(f.keeps_path(Some(Path::new("/finance/q3/x"))), "{prefix}");
        }
        let f = Filter::new(Some(Path::new("finance")), None, None, None).expect("filter");
        assert!(f.keeps_path(Some(Path::new("/finance"))));
        assert!(!f.keeps_path(Some(Path::new("/financed"))));
        assert!(!f.keeps_path(Some(Path::new("/financed/q3/x"))));
        assert!(!f.keeps_path(Some(Path::new("/hr/finance"))));
        assert!(
            !f.keeps_path(None),
            "events without a file path are left out"
        );
        let all = Filter::new(None, None, None, None).expect("filter");
        assert!(all.keeps_path(None));
        assert!(Filter::new(Some(Path::new("a/../b")), None, None, None).is_err());
    }

    #[test]
    fn principal_is_a_substring_and_time_a_window() {
        let f = Filter::new(
            None,
            Some("role/kmsfs-host"),
            Some("2026-12-01"),
            Some("2026-12-01T12:00:00Z"),
        )
        .expect("filter");
        let arn = "arn:aws:sts::111122223333:assumed-role/kmsfs-host/i-0abc";
        assert!(f.keeps_event(&event(arn, "2026-12-01T11:00:00Z")));
        assert!(!f.keeps_event(&event(arn, "2026-12-01T12:00:01Z")));
        assert!(!f.keeps_event(&event(arn, "2026-11-30T23:00:00Z")));
        assert!(!f.keeps_event(&event(
            "arn:aws:iam::1:user/mallory",
            "2026-12-01T11:00:00Z"
        )));
        assert!(Filter::new(None, None, Some("soon"), None).is_err());
    }
}
