//! `Secret<T>`: the one wrapper every device key and token lives in.
//!
//! Redaction is a property of the type, not of a log filter: `Debug` and `Display` print
//! `***`, and there is deliberately no `Serialize`, so a secret cannot reach a log line,
//! `state.json` or an event by accident. Code that needs the value calls [`Secret::expose`],
//! which is easy to find in review.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The wrapped value. Every call site is a place where the secret leaves its wrapper.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:#?}", Some(&secret)), "Some(\n    ***,\n)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_struct_holding_a_secret_stays_masked_in_debug() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            token: Secret<String>,
        }
        let login = Login { user: "ada".into(), token: Secret::new("eyJhbGciOi".into()) };
        let printed = format!("{login:?}");
        assert!(printed.contains("ada"));
        assert!(!printed.contains("eyJ"), "{printed}");
    }
}
