//! Which agent ids may register: exact names and `*` wildcard patterns.

use std::fmt;

/// One allowlist entry: an exact id, or a pattern where each `*` stands for any run of
/// characters (possibly empty): `waf-*`, `*-edge`, `waf-*-eu`, `*`.
///
/// Matching is case-sensitive and byte-exact outside the wildcards; there is no other
/// metacharacter (`?`, `[`, `\` are literal).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AgentPattern {
    pattern: String,
}

impl AgentPattern {
    /// A pattern from its text.
    #[must_use]
    pub fn new(pattern: impl Into<String>) -> Self {
        AgentPattern {
            pattern: pattern.into(),
        }
    }

    /// The pattern's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the pattern contains a `*`.
    #[must_use]
    pub fn is_wildcard(&self) -> bool {
        self.pattern.contains('*')
    }

    /// Whether `agent_id` matches. Linear in the lengths for patterns with one `*`, and at
    /// worst `O(pattern × id)` otherwise (the classic greedy matcher; no backtracking blow-up).
    #[must_use]
    pub fn matches(&self, agent_id: &str) -> bool {
        glob_match(self.pattern.as_bytes(), agent_id.as_bytes())
    }
}

impl fmt::Debug for AgentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.pattern, f)
    }
}

impl From<&str> for AgentPattern {
    fn from(s: &str) -> Self {
        AgentPattern::new(s)
    }
}

impl From<String> for AgentPattern {
    fn from(s: String) -> Self {
        AgentPattern::new(s)
    }
}

/// `*` matches any (possibly empty) byte run; everything else matches itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more byte and retry after it.
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The set of agent ids allowed to register.
///
/// An empty list allows every id (the reference's behaviour for an empty `allowed_agents`);
/// use authentication to restrict who may register then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: std::collections::HashSet<String>,
    patterns: Vec<AgentPattern>,
}

impl Allowlist {
    /// An empty list (allows everyone).
    #[must_use]
    pub fn allow_all() -> Self {
        Allowlist::default()
    }

    /// A list of exact ids and `*` patterns.
    pub fn new<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list = Allowlist::default();
        for e in entries {
            list.push(e);
        }
        list
    }

    /// Adds an exact id or a pattern.
    pub fn push(&mut self, entry: impl Into<String>) {
        let pattern = AgentPattern::new(entry);
        if pattern.is_wildcard() {
            self.patterns.push(pattern);
        } else {
            self.exact.insert(pattern.pattern);
        }
    }

    /// True when no entry was configured (every id is allowed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    /// Whether `agent_id` may register.
    #[must_use]
    pub fn allows(&self, agent_id: &str) -> bool {
        self.is_empty()
            || self.exact.contains(agent_id)
            || self.patterns.iter().any(|p| p.matches(agent_id))
    }
}

impl<S: Into<String>> FromIterator<S> for Allowlist {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Allowlist::new(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_are_case_sensitive() {
        let p = AgentPattern::new("waf");
        assert!(p.matches("waf"));
        assert!(!p.matches("WAF"));
        assert!(!p.matches("waf-1"));
        assert!(!p.matches(""));
    }

    #[test]
    fn prefix_suffix_and_infix_wildcards() {
        let prefix = AgentPattern::new("waf-*");
        assert!(prefix.matches("waf-1"));
        assert!(prefix.matches("waf-"));
        assert!(prefix.matches("waf-a-b-c"));
        assert!(!prefix.matches("waf"));
        assert!(!prefix.matches("xwaf-1"));

        let suffix = AgentPattern::new("*-edge");
        assert!(suffix.matches("eu-edge"));
        assert!(suffix.matches("-edge"));
        assert!(suffix.matches("a-edge-edge"));
        assert!(!suffix.matches("eu-edge2"));
        assert!(!suffix.matches("edge"));

        let infix = AgentPattern::new("waf-*-eu");
        assert!(infix.matches("waf-1-eu"));
        assert!(infix.matches("waf--eu"));
        assert!(infix.matches("waf-eu-eu"));
        assert!(!infix.matches("waf-eu"));
        assert!(!infix.matches("waf-1-eu-x"));

        let two = AgentPattern::new("*a*b");
        assert!(two.matches("ab"));
        assert!(two.matches("xxaxxbxb"));
        assert!(!two.matches("ba"));
    }

    #[test]
    fn lone_star_matches_everything_including_empty() {
        let all = AgentPattern::new("*");
        assert!(all.matches(""));
        assert!(all.matches("anything at all"));
        assert!(AgentPattern::new("**").matches("x"));
    }

    #[test]
    fn other_metacharacters_are_literal() {
        let p = AgentPattern::new("a?[b]");
        assert!(p.matches("a?[b]"));
        assert!(!p.matches("ax[b]"));
        assert!(!p.matches("a?b"));
    }

    #[test]
    fn multibyte_ids_match_bytewise() {
        let p = AgentPattern::new("ägent-*");
        assert!(p.matches("ägent-ü"));
        assert!(!p.matches("agent-ü"));
    }

    #[test]
    fn pathological_pattern_stays_fast() {
        let pattern = AgentPattern::new("*a*a*a*a*a*a*a*a*b");
        let text = "a".repeat(4096);
        let start = std::time::Instant::now();
        assert!(!pattern.matches(&text));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn allowlist_combines_exact_and_patterns() {
        let list = Allowlist::new(["auth", "waf-*", "*-edge"]);
        assert!(list.allows("auth"));
        assert!(list.allows("waf-7"));
        assert!(list.allows("eu-edge"));
        assert!(!list.allows("authz"));
        assert!(!list.allows("other"));
        assert!(Allowlist::allow_all().allows("whoever"));
        assert!(Allowlist::allow_all().is_empty());
        assert!(!list.is_empty());
        let collected: Allowlist = ["x"].into_iter().collect();
        assert!(collected.allows("x") && !collected.allows("y"));
    }
}
