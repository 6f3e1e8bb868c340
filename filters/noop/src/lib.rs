//! Does nothing: measures what the filter host itself costs per request.

use edgegate_filter_sdk::{export_filter, Filter, Phases};

struct Noop;

impl Filter for Noop {
    fn phases() -> Phases {
        Phases::REQUEST_HEAD
    }
}

export_filter!(Noop);

/// A per-request arena: every call ends with the instance reset or
/// discarded, so nothing needs freeing (`RequestArena`'s docs); 14 KiB keeps
/// the component at one 64 KiB page.
#[global_allocator]
static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();
