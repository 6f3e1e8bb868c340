//! The generated bindings of `edgegate:filter@0.2.0`, kept private to the
//! filter host: the rest of the gateway uses the curated surface in
//! [`super`]. Exports are async (the host calls guests on fibers so an
//! epoch callback can yield a spinning guest back to the worker); imports
//! are plain functions, all of them fast and non-blocking.

wasmtime::component::bindgen!({
    path: "../filters/wit",
    world: "filter",
    exports: { default: async },
});

pub use self::edgegate::filter::types;
