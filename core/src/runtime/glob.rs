//! Glob patterns over parameter names, as `group "…"` and `layer_decay` use them.
//!
//! Syntax (the whole name must match):
//!
//! | piece      | matches                                                         |
//! |------------|-----------------------------------------------------------------|
//! | `*`        | any run of characters, possibly empty, dots included            |
//! | `?`        | exactly one character                                           |
//! | `{depth}`  | a non-empty run of ASCII digits, captured as the layer depth    |
//! | `\c`       | the character `c` literally (`\*`, `\?`, `\{`, `\\`)            |
//! | anything else | itself                                                       |
//!
//! `*` crossing dots is deliberate: `*.bias` matches `layers.0.bias` and `*norm*`
//! matches `encoder.layernorm.weight`, the way people write these filters in
//! PyTorch code (`"bias" in name`), not the way shell globs treat `/`.
//!
//! A pattern holds at most one `{depth}`. When a name could be split in several ways
//! around it, the capture is the leftmost one, and among those the longest digit run
//! (`*{depth}.weight` on `block12.weight` captures 12, not 2). If that capture does
//! not fit in a `u32`, the name does not match.
//!
//! Matching runs a set-of-positions simulation over the pattern's pieces (an NFA
//! without epsilon loops), in O(pattern pieces × name length) time and
//! O(name length) memory, whatever the pattern: no backtracking, so no pattern can
//! blow up exponentially.

use std::fmt;

use thiserror::Error;

/// The only capture name a pattern may use.
const DEPTH_CAPTURE: &str = "depth";

/// A compiled glob pattern over parameter names.
#[derive(Clone, Debug, PartialEq)]
pub struct Glob {
    /// The pattern as written.
    pattern: String,
    /// Pieces before the `{depth}` capture (all of them when there is none).
    before_capture: Vec<Piece>,
    /// Pieces after the capture; `None` when the pattern has no capture.
    after_capture: Option<Vec<Piece>>,
}

/// One matching unit of a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// This exact character.
    Literal(char),
    /// `?`.
    AnyChar,
    /// `*`.
    AnyRun,
}

/// Why a glob pattern is refused. Positions are 0-based byte offsets into the pattern.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GlobError {
    /// The pattern is empty (it could only match an empty name).
    #[error("empty glob pattern (to match every parameter, write \"*\")")]
    Empty,
    /// A `{` without its `}`.
    #[error("glob \"{pattern}\": the `{{` at offset {at} is never closed (write `\\{{` for a literal brace)")]
    UnclosedBrace {
        /// The pattern.
        pattern: String,
        /// Byte offset of the `{`.
        at: usize,
    },
    /// A `{name}` capture other than `{depth}`.
    #[error("glob \"{pattern}\": unknown capture `{{{name}}}` at offset {at} (the only capture is `{{depth}}`; write `\\{{` for a literal brace)")]
    UnknownCapture {
        /// The name between the braces.
        name: String,
        /// The pattern.
        pattern: String,
        /// Byte offset of the `{`.
        at: usize,
    },
    /// More than one `{depth}`.
    #[error(
        "glob \"{pattern}\": a second `{{depth}}` at offset {at} (a pattern captures one depth)"
    )]
    TwoDepthCaptures {
        /// The pattern.
        pattern: String,
        /// Byte offset of the second `{`.
        at: usize,
    },
    /// A `\` at the very end, with nothing to escape.
    #[error("glob \"{pattern}\": the `\\` at offset {at} ends the pattern and escapes nothing (write `\\\\` for a literal backslash)")]
    TrailingEscape {
        /// The pattern.
        pattern: String,
        /// Byte offset of the `\`.
        at: usize,
    },
}

impl Glob {
    /// Compiles a pattern (syntax in the module documentation).
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut before_capture = Vec::new();
        let mut after_capture: Option<Vec<Piece>> = None;
        let mut chars = pattern.char_indices();
        while let Some((at, c)) = chars.next() {
            let piece = match c {
                '*' => Piece::AnyRun,
                '?' => Piece::AnyChar,
                '\\' => match chars.next() {
                    Some((_, escaped)) => Piece::Literal(escaped),
                    None => {
                        return Err(GlobError::TrailingEscape {
                            pattern: pattern.to_owned(),
                            at,
                        })
                    }
                },
                '{' => {
                    let rest = &pattern[at + 1..];
                    let Some(close) = rest.find('}') else {
                        return Err(GlobError::UnclosedBrace {
                            pattern: pattern.to_owned(),
                            at,
                        });
                    };
                    let name = &rest[..close];
                    if name != DEPTH_CAPTURE {
                        return Err(GlobError::UnknownCapture {
                            name: name.to_owned(),
                            pattern: pattern.to_owned(),
                            at,
                        });
                    }
                    if after_capture.is_some() {
                        return Err(GlobError::TwoDepthCaptures {
                            pattern: pattern.to_owned(),
                            at,
                        });
                    }
                    after_capture = Some(Vec::new());
                    // Skip the name and the closing brace (all ASCII: one char per byte).
                    for _ in 0..=close {
                        chars.next();
                    }
                    continue;
                }
                literal => Piece::Literal(literal),
            };
            let pieces = after_capture.as_mut().unwrap_or(&mut before_capture);
            // `**` matches what `*` matches; keeping one keeps the pieces minimal.
            if !(piece == Piece::AnyRun && pieces.last() == Some(&Piece::AnyRun)) {
                pieces.push(piece);
            }
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            before_capture,
            after_capture,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// `None` if the name does not match; `Some(depth)` if it does, where depth is the
    /// number captured by `{depth}` (`None` when the pattern has no capture).
    pub fn match_name(&self, name: &str) -> Option<Option<u32>> {
        let chars: Vec<char> = name.chars().collect();
        let Some(after_capture) = &self.after_capture else {
            let ends = reachable_ends(&self.before_capture, &chars);
            return ends[chars.len()].then_some(None);
        };
        // Positions where the part before the capture can end, and positions where the
        // part after it can start (found by matching it backwards from the name's end).
        let capture_starts = reachable_ends(&self.before_capture, &chars);
        let reversed_after: Vec<Piece> = after_capture.iter().rev().copied().collect();
        let reversed_name: Vec<char> = chars.iter().rev().copied().collect();
        let reversed_ends = reachable_ends(&reversed_after, &reversed_name);
        // For every position p: the last position q <= p where the part after the
        // capture can start, so the longest capture from any start is found in O(1).
        let mut last_resume = vec![None; chars.len() + 1];
        let mut latest = None;
        for (position, slot) in last_resume.iter_mut().enumerate() {
            if reversed_ends[chars.len() - position] {
                latest = Some(position);
            }
            *slot = latest;
        }
        // Length of the ASCII digit run starting at each position.
        let mut digit_run = vec![0usize; chars.len() + 1];
        for position in (0..chars.len()).rev() {
            if chars[position].is_ascii_digit() {
                digit_run[position] = digit_run[position + 1] + 1;
            }
        }

        for start in 0..chars.len() {
            if !capture_starts[start] || digit_run[start] == 0 {
                continue;
            }
            // Longest digit run first; `end > start` keeps the capture non-empty.
            if let Some(end) = last_resume[start + digit_run[start]].filter(|&end| end > start) {
                return parse_depth(&chars[start..end]).map(Some);
            }
        }
        None
    }

    /// Whether the whole name matches.
    pub fn matches(&self, name: &str) -> bool {
        self.match_name(name).is_some()
    }

    /// Whether the pattern has a `{depth}` capture.
    pub fn has_depth_capture(&self) -> bool {
        self.after_capture.is_some()
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// `ends[i]` is true when `pieces` can match exactly `name[..i]`.
fn reachable_ends(pieces: &[Piece], name: &[char]) -> Vec<bool> {
    let mut current = vec![false; name.len() + 1];
    current[0] = true;
    let mut next = vec![false; name.len() + 1];
    for piece in pieces {
        next.iter_mut().for_each(|reached| *reached = false);
        match piece {
            Piece::AnyRun => {
                // Everything at or after the first reachable position.
                let mut seen = false;
                for (reached, &was) in next.iter_mut().zip(&current) {
                    seen |= was;
                    *reached = seen;
                }
            }
            Piece::AnyChar | Piece::Literal(_) => {
                for (i, &c) in name.iter().enumerate() {
                    let accepts = match piece {
                        Piece::Literal(literal) => *literal == c,
                        _ => true,
                    };
                    next[i + 1] = current[i] && accepts;
                }
            }
        }
        std::mem::swap(&mut current, &mut next);
        if !current.contains(&true) {
            break;
        }
    }
    current
}

/// The captured digits as a depth; `None` if they overflow a `u32`.
fn parse_depth(digits: &[char]) -> Option<u32> {
    digits.iter().try_fold(0u32, |depth, digit| {
        let value = digit.to_digit(10)?;
        depth.checked_mul(10)?.checked_add(value)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn glob(pattern: &str) -> Glob {
        Glob::new(pattern).unwrap()
    }

    #[test]
    fn star_crosses_dots() {
        assert!(glob("*.bias").matches("layers.0.bias"));
        assert!(glob("*norm*").matches("encoder.layernorm.weight"));
        assert!(glob("*").matches(""));
        assert!(glob("*").matches("a.b.c"));
        assert!(!glob("*.bias").matches("layers.0.bias_extra"));
        assert!(!glob("*.bias").matches("bias"));
    }

    #[test]
    fn whole_name_must_match() {
        assert!(glob("weight").matches("weight"));
        assert!(!glob("weight").matches("layer.weight"));
        assert!(!glob("weight").matches("weights"));
        assert!(!glob("layer.*").matches("xlayer.0"));
    }

    #[test]
    fn question_mark_is_one_character() {
        assert!(glob("layers.?.weight").matches("layers.3.weight"));
        assert!(!glob("layers.?.weight").matches("layers.12.weight"));
        assert!(!glob("layers.?.weight").matches("layers..weight"));
        // One character, not one byte.
        assert!(glob("?").matches("é"));
    }

    #[test]
    fn escapes_make_literals() {
        assert!(glob(r"a\*b").matches("a*b"));
        assert!(!glob(r"a\*b").matches("axxb"));
        assert!(glob(r"\{depth}").matches("{depth}"));
        assert_eq!(glob(r"\{depth}").match_name("{depth}"), Some(None));
        assert!(!glob(r"\{depth}").has_depth_capture());
        assert!(glob(r"a\\b").matches(r"a\b"));
        assert!(glob(r"\?").matches("?"));
        assert!(!glob(r"\?").matches("x"));
    }

    #[test]
    fn depth_capture() {
        let g = glob("layers.{depth}.*");
        assert!(g.has_depth_capture());
        assert_eq!(g.match_name("layers.0.weight"), Some(Some(0)));
        assert_eq!(g.match_name("layers.12.attn.bias"), Some(Some(12)));
        assert_eq!(g.match_name("layers.007.x"), Some(Some(7)));
        assert_eq!(g.match_name("layers..weight"), None);
        assert_eq!(g.match_name("layers.x.weight"), None);
        assert_eq!(g.match_name("head.weight"), None);
        assert!(!glob("*.bias").has_depth_capture());
        assert_eq!(glob("*.bias").match_name("a.bias"), Some(None));
    }

    #[test]
    fn depth_capture_is_leftmost_then_longest() {
        assert_eq!(
            glob("*{depth}.weight").match_name("block12.weight"),
            Some(Some(12))
        );
        assert_eq!(glob("*{depth}*").match_name("a12b34"), Some(Some(12)));
        // The longest run that still lets the rest match.
        assert_eq!(glob("x{depth}3").match_name("x123"), Some(Some(12)));
        assert_eq!(
            glob("{depth}").match_name("4294967295"),
            Some(Some(u32::MAX))
        );
    }

    #[test]
    fn depth_overflow_does_not_match() {
        assert_eq!(glob("{depth}").match_name("4294967296"), None);
        assert_eq!(
            glob("layers.{depth}.w").match_name("layers.99999999999.w"),
            None
        );
        assert_eq!(glob("*{depth}").match_name("x99999999999"), None);
    }

    #[test]
    fn non_ascii_digits_are_not_depths() {
        // Arabic-Indic digit three.
        assert_eq!(glob("l{depth}").match_name("l\u{0663}"), None);
    }

    #[test]
    fn errors_name_pattern_and_position() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        let err = Glob::new("layers.{depth").unwrap_err();
        assert_eq!(
            err,
            GlobError::UnclosedBrace {
                pattern: "layers.{depth".into(),
                at: 7
            }
        );
        assert!(err.to_string().contains("layers.{depth"));
        assert!(err.to_string().contains("offset 7"));
        assert_eq!(
            Glob::new("a.{layer}").unwrap_err(),
            GlobError::UnknownCapture {
                name: "layer".into(),
                pattern: "a.{layer}".into(),
                at: 2
            }
        );
        assert_eq!(
            Glob::new("{depth}.{depth}").unwrap_err(),
            GlobError::TwoDepthCaptures {
                pattern: "{depth}.{depth}".into(),
                at: 8
            }
        );
        assert_eq!(
            Glob::new(r"abc\").unwrap_err(),
            GlobError::TrailingEscape {
                pattern: r"abc\".into(),
                at: 3
            }
        );
        let unknown = Glob::new("a.{layer}").unwrap_err().to_string();
        assert!(unknown.contains("{layer}"), "{unknown}");
        assert!(unknown.contains("{depth}"), "{unknown}");
    }

    #[test]
    fn positions_are_byte_offsets_after_multibyte_text() {
        assert_eq!(
            Glob::new("é{x}").unwrap_err(),
            GlobError::UnknownCapture {
                name: "x".into(),
                pattern: "é{x}".into(),
                at: 2
            }
        );
    }

    #[test]
    fn accessors() {
        let g = glob("layers.*");
        assert_eq!(g.as_str(), "layers.*");
        assert_eq!(g.to_string(), "layers.*");
        assert_eq!(g, glob("layers.*"));
        assert_ne!(g, glob("layers.?"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        // Exponential for a naive backtracking matcher: many stars, a name that almost
        // matches. With the position-set simulation this is ~60 × 10 000 steps.
        let pattern = "*a".repeat(30) + "b";
        let name = "a".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!glob(&pattern).matches(&name));
        let capture = "*a".repeat(30) + "{depth}*a*a*b";
        assert!(!glob(&capture).matches(&(name.clone() + "1")));
        let digits = "1".repeat(10_000);
        assert_eq!(glob("*{depth}*x").match_name(&digits), None);
        // Generous bound: only an exponential blowup could miss it.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
