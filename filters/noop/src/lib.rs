//! Does nothing: measures what the filter host itself costs per request.

use edgegate_filter_sdk::{export_filter, Filter, Phases};

struct Noop;

impl Filter for Noop {
    fn phases() -> Phases {
        Phases::REQUEST_HEAD
    }
}

export_filter!(Noop);
