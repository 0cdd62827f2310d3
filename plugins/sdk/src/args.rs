//! The argument bag a script passes to a named component (`topk(ratio: 0.01)`), with
//! typed access whose errors name the culprit argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use std::fmt;

/// One argument value as a script writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ArgValue {
    /// A number (lengths arrive already converted: to steps for a compressor, to
    /// samples for a batch controller).
    Number(f64),
    /// A string or a bare word such as `sample`.
    Text(String),
    /// `true` or `false`.
    Bool(bool),
}

impl ArgValue {
    fn kind(&self) -> &'static str {
        match self {
            ArgValue::Number(_) => "a number",
            ArgValue::Text(_) => "a string",
            ArgValue::Bool(_) => "a boolean",
        }
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Number(n) => write!(f, "{n}"),
            ArgValue::Text(s) => write!(f, "\"{s}\""),
            ArgValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Why a component rejected its arguments; `argument` names the culprit so the host
/// can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The argument at fault, or `None` for the call as a whole.
    pub argument: Option<String>,
    /// What is wrong, in plain words.
    pub message: String,
}

impl ArgError {
    /// A refusal of the argument `argument` (shown on its span in the script).
    pub fn new(argument: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            argument: Some(argument.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.argument {
            Some(name) => write!(f, "argument `{name}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ArgError {}

/// Named arguments, in name order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Args {
    values: BTreeMap<String, ArgValue>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace `name`.
    pub fn with(mut self, name: impl Into<String>, value: ArgValue) -> Self {
        self.values.insert(name.into(), value);
        self
    }

    /// The raw value of `name`.
    pub fn get(&self, name: &str) -> Option<&ArgValue> {
        self.values.get(name)
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    fn wrong_kind(name: &str, expected: &str, found: &ArgValue) -> ArgError {
        ArgError {
            argument: Some(name.to_string()),
            message: format!("expected {expected}, found {} ({found})", found.kind()),
        }
    }

    /// `name` as a number, `default` when absent.
    pub fn number(&self, name: &str, default: Option<f64>) -> Result<f64, ArgError> {
        match (self.values.get(name), default) {
            (Some(ArgValue::Number(n)), _) => Ok(*n),
            (Some(other), _) => Err(Self::wrong_kind(name, "a number", other)),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ArgError {
                argument: Some(name.to_string()),
                message: "is required".to_string(),
            }),
        }
    }

    /// `name` as a boolean, `default` when absent.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ArgError> {
        match self.values.get(name) {
            Some(ArgValue::Bool(b)) => Ok(*b),
            Some(other) => Err(Self::wrong_kind(name, "`true` or `false`", other)),
            None => Ok(default),
        }
    }

    /// `name` as text, `default` when absent.
    pub fn text<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, ArgError> {
        match self.values.get(name) {
            Some(ArgValue::Text(s)) => Ok(s),
            Some(other) => Err(Self::wrong_kind(name, "a string", other)),
            None => Ok(default),
        }
    }

    /// Fail on any argument not in `known`, so typos never pass silently.
    pub fn only(&self, known: &[&str]) -> Result<(), ArgError> {
        match self.names().find(|n| !known.contains(n)) {
            None => Ok(()),
            Some(unknown) => Err(ArgError {
                argument: Some(unknown.to_string()),
                message: format!("is not a parameter; expected one of: {}", known.join(", ")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args::new()
            .with("ratio", ArgValue::Number(0.01))
            .with("approx", ArgValue::Text("sample".into()))
            .with("warm", ArgValue::Bool(true))
    }

    #[test]
    fn typed_access_returns_values_and_defaults() {
        let a = args();
        assert_eq!(a.number("ratio", None), Ok(0.01));
        assert_eq!(a.number("momentum", Some(0.9)), Ok(0.9));
        assert_eq!(a.text("approx", "exact"), Ok("sample"));
        assert_eq!(a.bool("warm", false), Ok(true));
        assert_eq!(a.bool("cold", false), Ok(false));
    }

    #[test]
    fn errors_name_the_argument() {
        let a = args();
        let missing = a.number("rank", None).unwrap_err();
        assert_eq!(missing.to_string(), "argument `rank`: is required");
        let kind = a.number("approx", None).unwrap_err();
        assert_eq!(kind.argument.as_deref(), Some("approx"));
        assert!(kind.message.contains("found a string"));
        let unknown = a.only(&["ratio", "approx"]).unwrap_err();
        assert_eq!(unknown.argument.as_deref(), Some("warm"));
        assert!(a.only(&["ratio", "approx", "warm"]).is_ok());
    }
}
