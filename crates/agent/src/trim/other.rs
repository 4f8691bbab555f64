//! Systems without a reclaim request the agent uses yet: nothing to do.

use super::Trimmed;

pub(super) fn after_startup() -> Trimmed {
    Trimmed::default()
}
