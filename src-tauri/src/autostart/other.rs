//! Systems without an autostart implementation yet (Windows, macOS): said plainly.

use super::AutostartError;

pub fn is_enabled() -> bool {
    false
}

pub fn set_enabled(_enabled: bool) -> Result<(), AutostartError> {
    Err(AutostartError::Unsupported)
}

pub fn reapply() -> Result<(), AutostartError> {
    Ok(())
}
