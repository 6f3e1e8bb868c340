//! Recycled filter instances with a verified reset.
//!
//! A fresh component instance per call costs ≥ 4 µs however little the
//! guest does (store, three core instances, function tables, registry, the
//! pool's memory reset). Reusing an instance is 2–3× cheaper
//! (`filter_bench`), but only safe
//! if everything one request could leave behind is put back before the
//! next. wasmtime 48 has no reset for component instances
//! (bytecodealliance/wasmtime#14313), so edgegate builds one into the
//! component at load, from the component's own structure, never trusting
//! the guest to clean up after itself:
//!
//! - The component must have exactly one core module with state of its own
//!   (a linear memory and/or mutable globals), instantiated once. Every
//!   other core module (wit-component's shim and fixup) must have none.
//! - No module may change a table or drop a segment after instantiation
//!   (`table.set/grow/fill/copy/init`, `elem.drop`, `data.drop`), use GC
//!   types, a start function, a shared or 64-bit memory, or import a
//!   mutable global: the reset could not restore those, so such a component
//!   keeps fresh instances. So does one starting with more than
//!   [`MAX_RESET_BYTES`] of memory, where the pool's own reset is cheaper.
//! - Into the stateful module go a second memory, as large as the first
//!   starts and initialised with the same data segments, a shadow of every
//!   mutable global, and two functions generated here. No guest
//!   instruction names the second memory or a shadow (they are appended
//!   after everything the guest was compiled against and not exported), so
//!   they hold what instantiation made until the host replaces it:
//!   - the reset ([`RESET_EXPORT`]) traps if the memory grew past its
//!     initial size (the host then drops the instance: a wasm memory cannot
//!     shrink), copies the second memory over the first (`memory.copy`),
//!     only the granules a call may have written where the module can be
//!     tracked (`recycle/track.rs`), and every shadow into its global;
//!   - the snapshot ([`SNAPSHOT_EXPORT`]) copies the other way, all of it.
//! - The phase exports' post-return functions (which wasmtime runs right
//!   after lifting a call's results, before the call returns to the host)
//!   are wrapped to end with the reset, so a recycled call is one entry
//!   into the instance, not two ([`Instrumented::folded`]); where that
//!   cannot be shown safe, the host calls the reset export itself.
//!
//! The host calls the snapshot once per instance, right after
//! instantiation and the guest's `phases` export, before the instance has
//! seen any request: with the store holding no request's facts, so a
//! snapshot holds only what the route's config and the guest's own
//! initialisation made (its config parsed once per instance instead of per
//! request, as Wizer pre-initialises, but at run time). It calls the reset
//! after every successful call whose guest left no resource handle open and
//! did not grow its memory (or the call's post-return did); anything else
//! (a trap, a timeout, a failed reset) drops the instance. Component-level
//! state needs nothing: a call that returned has released its borrows and
//! left the instance enterable, and an open handle is refused above.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::{Operator, Parser, Payload};

mod track;

/// The export the reset function is lifted as.
pub const RESET_EXPORT: &str = "edgegate-reset";

/// The export the snapshot function is lifted as: it makes the instance's
/// current state the one every later reset restores.
pub const SNAPSHOT_EXPORT: &str = "edgegate-snapshot";

/// Marks precompiled artifacts of instrumented components in the cache
/// directory (named by the SHA-256 of the instrumented bytes, so a change
/// to the instrumentation never reuses an older artifact).
pub const ARTIFACT_TAG: &str = "-recycled";

/// The largest initial memory a reset zeroes: also what the pooling
/// allocator keeps resident and zeroes itself for a fresh instance
/// (`linear_memory_keep_resident`). A guest starting with more memory keeps
/// fresh instances: past this size the pool's `madvise` is cheaper than a
/// `memory.fill` (image-transform starts at 1.7 MiB; the header filters at
/// 64 KiB).
pub const MAX_RESET_BYTES: u64 = 256 << 10;

/// What one core module holds that a reset must restore.
#[derive(Default)]
struct ModuleFacts {
    stateful: bool,
    /// Why the module cannot be reset, if it cannot.
    refusal: Option<String>,
    initial_pages: u64,
    /// Whether it imports a memory (another module's, which it could write).
    imports_memory: bool,
}

/// A component with the reset and snapshot built in.
pub struct Instrumented {
    /// The instrumented component.
    pub bytes: Vec<u8>,
    /// The names asked for in `fold` (top-level function exports) whose
    /// post-return function now ends with the reset: a successful call of
    /// one of them leaves the instance reset, with no reset call of its own.
    pub folded: Vec<String>,
    /// Why the reset copies the whole memory back instead of what a call
    /// may have written (`recycle/track.rs`), if it does.
    pub untracked: Option<String>,
}

/// The component with a reset export added, or why it cannot get one (the
/// filter then runs in fresh instances).
///
/// `fold` names the top-level function exports whose calls the host resets
/// after: where such an export's post-return function (which the host runs
/// right after lifting the results, on the same fiber) belongs to the
/// stateful module and serves no other export, it is wrapped so the reset
/// follows it, which saves the host a second call into the instance per
/// call (~0.3 µs). A wrapped post-return skips the reset instead of
/// trapping when the memory grew (the call has succeeded; the host drops
/// the instance).
pub fn instrument(component: &[u8], fold: &[&str]) -> Result<Instrumented, String> {
    let types = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(component)
        .map_err(|e| format!("invalid component: {e}"))?;
    let types = types.as_ref();

    // Top-level sections, the core modules among them, and core instances.
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut modules: Vec<std::ops::Range<usize>> = Vec::new();
    let mut instantiations: Vec<u32> = Vec::new();
    let mut exported = Vec::new();
    // Where each core function comes from: an export of a core instance
    // (its index and export name), or anything else (`None`).
    let mut core_funcs: Vec<Option<(u32, String)>> = Vec::new();
    // Each component function's `canon lift` (an index into `lifts`), if
    // it is one or re-exports one.
    let mut component_funcs: Vec<Option<usize>> = Vec::new();
    // Each `canon lift`'s post-return core function.
    let mut lifts: Vec<Option<u32>> = Vec::new();
    // Top-level function exports: (name, component function index).
    let mut func_exports: Vec<(String, u32)> = Vec::new();
    // For tracking: every `realloc` canonical option, the largest result
    // area of a lowered function, and why tracking is off if it is.
    let mut reallocs: Vec<u32> = Vec::new();
    let mut result_area = 0u32;
    let mut untracked: Option<String> = None;
    let mut parser = Parser::new(0);
    let mut offset = 0;
    loop {
        let (payload, consumed) = match parser
            .parse(&component[offset..], true)
            .map_err(|e| e.to_string())?
        {
            wasmparser::Chunk::Parsed { payload, consumed } => (payload, consumed),
            wasmparser::Chunk::NeedMoreData(_) => return Err("truncated component".into()),
        };
        offset += consumed;
        match &payload {
            Payload::Version { encoding, .. } if *encoding != wasmparser::Encoding::Component => {
                return Err("not a component".into());
            }
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                // The parser has already stepped over the module's bytes.
                modules.push(unchecked_range.clone());
                offset = unchecked_range.end;
            }
            Payload::ComponentSection { .. } => {
                return Err("it nests components".into());
            }
            Payload::InstanceSection(reader) => {
                for instance in reader.clone() {
                    match instance.map_err(|e| e.to_string())? {
                        wasmparser::Instance::Instantiate { module_index, .. } => {
                            instantiations.push(module_index)
                        }
                        wasmparser::Instance::FromExports(_) => instantiations.push(u32::MAX),
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader.clone() {
                    let export = export.map_err(|e| e.to_string())?;
                    exported.push(export.name.name.to_string());
                    if export.kind == wasmparser::ComponentExternalKind::Func {
                        // An export is a new index for what it exports.
                        let lift = component_funcs
                            .get(export.index as usize)
                            .copied()
                            .flatten();
                        func_exports.push((export.name.name.to_string(), export.index));
                        component_funcs.push(lift);
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader.clone() {
                    if let wasmparser::ComponentTypeRef::Func(_) =
                        import.map_err(|e| e.to_string())?.ty
                    {
                        component_funcs.push(None);
                    }
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader.clone() {
                    match alias.map_err(|e| e.to_string())? {
                        wasmparser::ComponentAlias::InstanceExport {
                            kind: wasmparser::ComponentExternalKind::Func,
                            ..
                        } => component_funcs.push(None),
                        wasmparser::ComponentAlias::CoreInstanceExport {
                            kind: wasmparser::ExternalKind::Func,
                            instance_index,
                            name,
                        } => core_funcs.push(Some((instance_index, name.to_string()))),
                        _ => {}
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for function in reader.clone() {
                    let function = function.map_err(|e| e.to_string())?;
                    let options: &[wasmparser::CanonicalOption] = match &function {
                        wasmparser::CanonicalFunction::Lift { options, .. }
                        | wasmparser::CanonicalFunction::Lower { options, .. } => options,
                        _ => &[],
                    };
                    for option in options {
                        match option {
                            wasmparser::CanonicalOption::Realloc(f) => reallocs.push(*f),
                            wasmparser::CanonicalOption::Async
                            | wasmparser::CanonicalOption::Callback(_) => {
                                untracked.get_or_insert("it lifts or lowers async".into());
                            }
                            _ => {}
                        }
                    }
                    match function {
                        wasmparser::CanonicalFunction::Lift { options, .. } => {
                            component_funcs.push(Some(lifts.len()));
                            lifts.push(options.iter().find_map(|o| match o {
                                wasmparser::CanonicalOption::PostReturn(f) => Some(*f),
                                _ => None,
                            }));
                        }
                        // Every other canonical function is a core function.
                        wasmparser::CanonicalFunction::Lower { func_index, .. } => {
                            core_funcs.push(None);
                            let ty = &types[types.component_function_at(func_index)];
                            match ty.result.as_ref().map(|r| track::abi_size(types, r)) {
                                None => {}
                                Some(Some((size, _))) => result_area = result_area.max(size),
                                Some(None) => {
                                    untracked.get_or_insert(
                                        "a lowered function's result has an unknown size".into(),
                                    );
                                }
                            }
                        }
                        wasmparser::CanonicalFunction::ResourceNew { .. }
                        | wasmparser::CanonicalFunction::ResourceDrop { .. }
                        | wasmparser::CanonicalFunction::ResourceRep { .. } => {
                            core_funcs.push(None)
                        }
                        _ => {
                            core_funcs.push(None);
                            untracked.get_or_insert("it uses async canonical built-ins".into());
                        }
                    }
                }
            }
            Payload::End(_) => break,
            _ => {}
        }
        if let Some(section) = payload.as_section() {
            sections.push(section);
        }
    }
    if types.module_count() as usize != modules.len() {
        return Err("it imports or aliases core modules".into());
    }
    if let Some(name) = exported
        .iter()
        .find(|n| *n == RESET_EXPORT || *n == SNAPSHOT_EXPORT)
    {
        return Err(format!("it already exports `{name}`"));
    }

    let mut stateful = None;
    for (index, range) in modules.iter().enumerate() {
        let facts = module_facts(&component[range.clone()])?;
        if let Some(why) = facts.refusal {
            return Err(format!("core module {index}: {why}"));
        }
        if facts.imports_memory {
            untracked.get_or_insert(format!("core module {index} imports a memory"));
        }
        if facts.stateful {
            if stateful.is_some() {
                return Err("more than one core module has state".into());
            }
            stateful = Some((index, facts));
        }
    }
    let (module_index, facts) = stateful.ok_or("no core module has state")?;
    let mut instances = instantiations
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == module_index as u32);
    let core_instance = match (instances.next(), instances.next()) {
        (Some((i, _)), None) => i as u32,
        _ => return Err("its stateful core module is not instantiated exactly once".into()),
    };

    // The stateful module's exports to wrap, and the component exports that
    // then reset. Only when the walk above accounted for every function
    // (else nothing is folded: the host calls the reset itself).
    let mut wrap: Vec<String> = Vec::new();
    let mut folded = Vec::new();
    let accounted = core_funcs.len() == types.function_count() as usize
        && component_funcs.len() == types.component_function_count() as usize;
    if accounted {
        let stateful_export = |lift: usize| {
            let f = lifts[lift]?;
            match core_funcs.get(f as usize)? {
                Some((instance, name)) if *instance == core_instance => Some(name.clone()),
                _ => None,
            }
        };
        let asked = |lift: usize| {
            func_exports.iter().any(|(name, index)| {
                fold.contains(&name.as_str()) && component_funcs[*index as usize] == Some(lift)
            })
        };
        for (name, index) in &func_exports {
            if !fold.contains(&name.as_str()) {
                continue;
            }
            let Some(lift) = component_funcs[*index as usize] else {
                continue;
            };
            let Some(post) = stateful_export(lift) else {
                continue;
            };
            // Every lift with this post-return must be one the host resets
            // after (`phases`, say, must not reset what it just built).
            if (0..lifts.len()).all(|l| stateful_export(l).as_deref() != Some(&post) || asked(l)) {
                if !wrap.contains(&post) {
                    wrap.push(post);
                }
                folded.push(name.clone());
            }
        }
    }

    // Tracking needs every `realloc` the host may call to be the stateful
    // module's, so that it can be wrapped to mark what it hands out.
    let mut realloc_names: Vec<String> = Vec::new();
    if !accounted {
        untracked.get_or_insert("its functions could not all be traced".into());
    }
    for f in &reallocs {
        match core_funcs.get(*f as usize) {
            Some(Some((instance, name))) if accounted && *instance == core_instance => {
                if !realloc_names.contains(name) {
                    realloc_names.push(name.clone())
                }
            }
            _ => {
                untracked.get_or_insert("a realloc is not the stateful module's".into());
            }
        }
    }
    if result_area > track::RESULT_AREA {
        untracked.get_or_insert(format!(
            "a lowered function's result takes {result_area} bytes, more than {}",
            track::RESULT_AREA
        ));
    }
    let module_bytes = &component[modules[module_index].clone()];
    if untracked.is_none() {
        untracked = track::refusal(module_bytes);
    }
    let tracked = untracked.is_none().then_some(realloc_names.as_slice());
    let (module, is_tracked) = rewrite_module(module_bytes, &facts, &wrap, tracked)?;
    if !is_tracked {
        untracked.get_or_insert("it has no memory or no globals".into());
    }

    let mut out = wasm_encoder::Component::new();
    for (id, range) in &sections {
        if *range == modules[module_index] {
            out.section(&wasm_encoder::RawSection {
                id: *id,
                data: &module,
            });
        } else {
            out.section(&wasm_encoder::RawSection {
                id: *id,
                data: &component[range.clone()],
            });
        }
    }
    // Appended after everything else, so no existing index moves.
    let mut aliases = wasm_encoder::ComponentAliasSection::new();
    for name in [RESET_EXPORT, SNAPSHOT_EXPORT] {
        aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance: core_instance,
            kind: wasm_encoder::ExportKind::Func,
            name,
        });
    }
    out.section(&aliases);
    let mut func_types = wasm_encoder::ComponentTypeSection::new();
    func_types
        .function()
        .params(std::iter::empty::<(&str, wasm_encoder::ComponentValType)>())
        .result(None);
    out.section(&func_types);
    let mut canon = wasm_encoder::CanonicalFunctionSection::new();
    for core_func in [types.function_count(), types.function_count() + 1] {
        canon.lift(
            core_func,
            types.component_type_count(),
            std::iter::empty::<wasm_encoder::CanonicalOption>(),
        );
    }
    out.section(&canon);
    let mut exports = wasm_encoder::ComponentExportSection::new();
    for (i, name) in [RESET_EXPORT, SNAPSHOT_EXPORT].into_iter().enumerate() {
        exports.export(
            name,
            wasm_encoder::ComponentExportKind::Func,
            types.component_function_count() + i as u32,
            None,
        );
    }
    out.section(&exports);
    let bytes = out.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&bytes)
        .map_err(|e| format!("instrumented component does not validate: {e}"))?;
    Ok(Instrumented {
        bytes,
        folded,
        untracked,
    })
}

/// Reads what `module` holds and whether a reset can restore it.
fn module_facts(module: &[u8]) -> Result<ModuleFacts, String> {
    let mut facts = ModuleFacts::default();
    let refuse = |facts: &mut ModuleFacts, why: String| {
        facts.refusal.get_or_insert(why);
    };
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(|e| e.to_string())? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(|e| e.to_string())?.types() {
                        if !matches!(
                            ty.composite_type.inner,
                            wasmparser::CompositeInnerType::Func(_)
                        ) {
                            refuse(&mut facts, "it uses GC types".into());
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(|e| e.to_string())?.ty {
                        wasmparser::TypeRef::Global(g) if g.mutable => {
                            refuse(&mut facts, "it imports a mutable global".into())
                        }
                        wasmparser::TypeRef::Memory(_) => facts.imports_memory = true,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                let memories = reader
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                facts.stateful |= !memories.is_empty();
                match memories.as_slice() {
                    [] => {}
                    [m] if m.memory64 || m.shared => {
                        refuse(&mut facts, "its memory is shared or 64-bit".into())
                    }
                    [m] if m.initial.saturating_mul(65536) > MAX_RESET_BYTES => refuse(
                        &mut facts,
                        format!(
                            "it starts with {} KiB of memory, more than a reset zeroes ({} KiB)",
                            m.initial * 64,
                            MAX_RESET_BYTES >> 10
                        ),
                    ),
                    [m] => facts.initial_pages = m.initial,
                    _ => refuse(&mut facts, "it defines several memories".into()),
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    facts.stateful |= global.map_err(|e| e.to_string())?.ty.mutable;
                }
            }
            Payload::StartSection { .. } => refuse(&mut facts, "it has a start function".into()),
            Payload::DataSection(reader) => {
                for data in reader {
                    match data.map_err(|e| e.to_string())?.kind {
                        wasmparser::DataKind::Active {
                            memory_index: 0, ..
                        } => {}
                        _ => refuse(&mut facts, "it has passive data segments".into()),
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                while !ops.eof() {
                    let op = ops.read().map_err(|e| e.to_string())?;
                    if let Some(name) = forbidden(&op) {
                        refuse(&mut facts, format!("it uses `{name}`"));
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// Instructions leaving state behind that the reset cannot restore.
fn forbidden(op: &Operator) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::DataDrop { .. } => "data.drop",
        _ => return None,
    })
}

/// `module` with a second memory and shadow globals holding the state a
/// reset restores (instantiation's, until a snapshot replaces it), and the
/// reset and snapshot functions, exported as [`RESET_EXPORT`] and
/// [`SNAPSHOT_EXPORT`].
///
/// Memory 1 gets the module's active data segments too, so right after
/// instantiation it equals memory 0 and each shadow global its global: a
/// reset before any snapshot restores exactly what instantiation made. No
/// instruction of the guest names memory 1 or a shadow global (both are
/// appended after everything it was compiled against, and neither is
/// exported), so only these functions reach them.
///
/// Each function export named in `wrap` (a post-return function) is
/// re-pointed at a wrapper that calls it, then resets as the reset does,
/// except that it skips the reset when the memory grew instead of trapping.
///
/// With `tracked` (the exports the component uses as `realloc`), every
/// function marks what it writes and the reset copies back only that
/// ([`track`]); each of those exports is re-pointed at a wrapper that
/// marks the block it returns.
fn rewrite_module(
    module: &[u8],
    facts: &ModuleFacts,
    wrap: &[String],
    tracked: Option<&[String]>,
) -> Result<(Vec<u8>, bool), String> {
    let mut rt = RoundtripReencoder;
    let err = |e: wasm_encoder::reencode::Error| e.to_string();
    let text = |e: wasmparser::BinaryReaderError| e.to_string();

    // A first pass: active segments, as (offset expression, bytes), copied
    // into memory 1 as well; each type's parameter count and results; each
    // function's type; imported functions and globals; globals defined; and
    // the exports to wrap as (name, function, its type, whether a realloc).
    let mut segments: Vec<(wasmparser::ConstExpr, &[u8])> = Vec::new();
    let mut data_total = 0u32;
    let mut signatures: Vec<Option<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)>> =
        Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut imported_funcs = 0u32;
    let mut imported_globals = 0u32;
    let mut defined_globals = 0u32;
    let mut mutable_count = 0u32;
    let mut has_globals = false;
    // Tracking needs a memory, and a global section to add the mask to
    // (known before the exports: the global section precedes them).
    let trackable = |has_globals: bool| tracked.is_some() && facts.initial_pages > 0 && has_globals;
    let mut wrappers: Vec<(&str, u32, u32, bool)> = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(text)? {
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(text)?;
                    if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                        segments.push((offset_expr, data.data));
                    }
                    data_total += 1;
                }
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(text)?.types() {
                        signatures.push(match &ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                Some((f.params().to_vec(), f.results().to_vec()))
                            }
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(text)?.ty {
                        wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) => {
                            func_types.push(t);
                            imported_funcs += 1;
                        }
                        wasmparser::TypeRef::Global(_) => imported_globals += 1,
                        wasmparser::TypeRef::Memory(_) => {
                            return Err("its stateful module imports a memory".into());
                        }
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    func_types.push(t.map_err(text)?);
                }
            }
            Payload::GlobalSection(reader) => {
                has_globals = true;
                defined_globals = reader.count();
                for g in reader {
                    mutable_count += g.map_err(text)?.ty.mutable as u32;
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(text)?;
                    if export.name == RESET_EXPORT || export.name == SNAPSHOT_EXPORT {
                        return Err(format!("a core module already exports `{}`", export.name));
                    }
                    let post = wrap.iter().any(|w| w == export.name);
                    let realloc = trackable(has_globals)
                        && tracked.is_some_and(|r| r.iter().any(|w| w == export.name));
                    if export.kind != wasmparser::ExternalKind::Func || !(post || realloc) {
                        continue;
                    }
                    let ty = *func_types
                        .get(export.index as usize)
                        .ok_or("an export names no function")?;
                    let fits = match signatures.get(ty as usize) {
                        // A post-return function returns nothing; a realloc
                        // takes four i32 and returns one.
                        Some(Some((_, results))) if post => results.is_empty() && !realloc,
                        Some(Some((params, results))) => {
                            params == &[wasmparser::ValType::I32; 4]
                                && results == &[wasmparser::ValType::I32]
                        }
                        _ => false,
                    };
                    if !fits {
                        return Err(format!("`{}` has the wrong type for its role", export.name));
                    }
                    wrappers.push((export.name, export.index, ty, realloc));
                }
            }
            _ => {}
        }
    }
    let defined_funcs = func_types.len() as u32 - imported_funcs;
    if defined_funcs == 0 || signatures.is_empty() {
        return Err("the stateful module has no types or code".into());
    }
    let type_count = signatures.len() as u32;
    // Appended types: `[] -> []` (reset, snapshot), `[i32 i32] -> []` (mark).
    let (unit_type, mark_type) = (type_count, type_count + 1);
    // Appended functions: reset, snapshot, the wrappers, then the marking.
    let first = imported_funcs + defined_funcs;
    let mark = first + 2 + wrappers.len() as u32;
    // Appended globals: the shadows, then the dirty mask.
    let plan = trackable(has_globals).then(|| track::Plan {
        shift: track::shift_for(facts.initial_pages << 16),
        total: (facts.initial_pages << 16) as u32,
        dirty: imported_globals + defined_globals + mutable_count,
        mark,
        // A call passes a result pointer last when the callee returns
        // nothing and its last parameter is an i32 (the canonical ABI).
        result_pointer: func_types[..imported_funcs as usize]
            .iter()
            .map(|t| {
                matches!(&signatures[*t as usize], Some((params, results))
                        if results.is_empty() && params.last() == Some(&wasmparser::ValType::I32))
            })
            .collect(),
    });
    let plan = plan.as_ref();

    let mut out = wasm_encoder::Module::new();
    let mut has_memory = false;
    // Mutable globals, as (index, shadow index).
    let mut mutable_globals: Vec<(u32, u32)> = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(text)?;
        match &payload {
            Payload::TypeSection(reader) => {
                let mut section = wasm_encoder::TypeSection::new();
                for group in reader.clone() {
                    rt.parse_recursive_type_group(section.ty(), group.map_err(text)?)
                        .map_err(err)?;
                }
                section.ty().function([], []);
                section
                    .ty()
                    .function([wasm_encoder::ValType::I32, wasm_encoder::ValType::I32], []);
                out.section(&section);
                continue;
            }
            Payload::FunctionSection(reader) => {
                let mut section = wasm_encoder::FunctionSection::new();
                rt.parse_function_section(&mut section, reader.clone())
                    .map_err(err)?;
                section.function(unit_type).function(unit_type);
                for (_, _, ty, _) in &wrappers {
                    section.function(*ty);
                }
                if plan.is_some() {
                    section.function(mark_type);
                }
                out.section(&section);
                continue;
            }
            Payload::MemorySection(reader) => {
                let mut section = wasm_encoder::MemorySection::new();
                rt.parse_memory_section(&mut section, reader.clone())
                    .map_err(err)?;
                if reader.count() == 1 {
                    // Exactly as large as memory 0 starts, and never larger.
                    section.memory(wasm_encoder::MemoryType {
                        minimum: facts.initial_pages,
                        maximum: Some(facts.initial_pages),
                        memory64: false,
                        shared: false,
                        page_size_log2: None,
                    });
                    has_memory = true;
                }
                out.section(&section);
                continue;
            }
            Payload::GlobalSection(reader) => {
                let mut section = wasm_encoder::GlobalSection::new();
                rt.parse_global_section(&mut section, reader.clone())
                    .map_err(err)?;
                let count = reader.count();
                for (i, global) in reader.clone().into_iter().enumerate() {
                    let global = global.map_err(text)?;
                    if global.ty.mutable {
                        let shadow = imported_globals + count + mutable_globals.len() as u32;
                        mutable_globals.push((imported_globals + i as u32, shadow));
                        section.global(
                            rt.global_type(global.ty).map_err(err)?,
                            &rt.const_expr(global.init_expr).map_err(err)?,
                        );
                    }
                }
                if plan.is_some() {
                    section.global(
                        wasm_encoder::GlobalType {
                            val_type: wasm_encoder::ValType::I64,
                            mutable: true,
                            shared: false,
                        },
                        &wasm_encoder::ConstExpr::i64_const(0),
                    );
                }
                out.section(&section);
                continue;
            }
            Payload::ExportSection(reader) => {
                let mut section = wasm_encoder::ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(text)?;
                    let kind = rt.export_kind(export.kind).map_err(err)?;
                    let index = match wrappers.iter().position(|(name, ..)| *name == export.name) {
                        Some(i) if export.kind == wasmparser::ExternalKind::Func => {
                            first + 2 + i as u32
                        }
                        _ => export.index,
                    };
                    section.export(export.name, kind, index);
                }
                section
                    .export(RESET_EXPORT, wasm_encoder::ExportKind::Func, first)
                    .export(SNAPSHOT_EXPORT, wasm_encoder::ExportKind::Func, first + 1);
                out.section(&section);
                continue;
            }
            Payload::DataCountSection { .. } => {
                out.section(&wasm_encoder::DataCountSection {
                    count: data_total + segments.len() as u32,
                });
                continue;
            }
            Payload::CodeSectionStart { count, range, .. } => {
                let mut section = wasm_encoder::CodeSection::new();
                let reader = wasmparser::CodeSectionReader::new(wasmparser::BinaryReader::new(
                    &module[range.clone()],
                    range.start,
                ))
                .map_err(text)?;
                if reader.count() != *count {
                    return Err("inconsistent code section".into());
                }
                for (i, body) in reader.into_iter().enumerate() {
                    let body = body.map_err(text)?;
                    match plan {
                        Some(plan) => {
                            let ty = func_types[imported_funcs as usize + i] as usize;
                            let (params, results) =
                                signatures[ty].as_ref().ok_or("a function without a type")?;
                            section.function(&track::body(
                                &body,
                                params.len() as u32,
                                results,
                                plan,
                            )?);
                        }
                        None => {
                            section.raw(&module[body.range()]);
                        }
                    }
                }
                let state = State {
                    facts,
                    has_memory,
                    globals: &mutable_globals,
                    plan,
                };
                section.function(&state.reset());
                section.function(&state.snapshot());
                for (_, wrapped, ty, realloc) in &wrappers {
                    let params = signatures[*ty as usize]
                        .as_ref()
                        .map_or(0, |(p, _)| p.len() as u32);
                    section.function(&match plan {
                        Some(plan) if *realloc => State::marking_realloc(*wrapped, plan),
                        _ => state.resetting_post_return(*wrapped, params),
                    });
                }
                if let Some(plan) = plan {
                    section.function(&track::mark_range(plan));
                }
                out.section(&section);
                continue;
            }
            Payload::CodeSectionEntry(_) => continue,
            Payload::DataSection(reader) => {
                let mut section = wasm_encoder::DataSection::new();
                rt.parse_data_section(&mut section, reader.clone())
                    .map_err(err)?;
                for (offset, bytes) in &segments {
                    section.active(
                        1,
                        &rt.const_expr(offset.clone()).map_err(err)?,
                        bytes.iter().copied(),
                    );
                }
                out.section(&section);
                continue;
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            out.section(&wasm_encoder::RawSection {
                id,
                data: &module[range],
            });
        }
    }
    if !segments.is_empty() && !has_memory {
        return Err("its data segments have no memory of its own".into());
    }
    Ok((out.finish(), plan.is_some()))
}

/// What the generated functions restore and how.
struct State<'a> {
    facts: &'a ModuleFacts,
    has_memory: bool,
    /// Mutable globals, as (index, shadow index).
    globals: &'a [(u32, u32)],
    /// Dirty-granule tracking, when the module has it.
    plan: Option<&'a track::Plan>,
}

impl State<'_> {
    /// The reset: trap if memory 0 grew, else put back what changed.
    fn reset(&self) -> wasm_encoder::Function {
        let mut f = wasm_encoder::Function::new(track::RESTORE_LOCALS);
        self.restore(&mut f, 0, &wasm_encoder::Instruction::Unreachable);
        f.instruction(&wasm_encoder::Instruction::End);
        f
    }

    /// The snapshot: trap if memory 0 grew (it would not fit memory 1),
    /// else copy the whole memory and every global into the saved state.
    fn snapshot(&self) -> wasm_encoder::Function {
        use wasm_encoder::Instruction as I;
        let mut f = wasm_encoder::Function::new([]);
        if self.has_memory {
            self.if_grown(&mut f, &I::Unreachable);
            f.instruction(&I::I32Const(0))
                .instruction(&I::I32Const(0))
                .instruction(&I::I32Const((self.facts.initial_pages << 16) as u32 as i32))
                .instruction(&I::MemoryCopy {
                    dst_mem: 1,
                    src_mem: 0,
                });
        }
        if let Some(plan) = self.plan {
            // Memory 0 equals memory 1 again.
            f.instruction(&I::I64Const(0))
                .instruction(&I::GlobalSet(plan.dirty));
        }
        for &(global, shadow) in self.globals {
            f.instruction(&I::GlobalGet(global))
                .instruction(&I::GlobalSet(shadow));
        }
        f.instruction(&I::End);
        f
    }

    /// A post-return function `wrapped` (of `params` parameters) followed
    /// by the reset, skipped when the memory grew.
    fn resetting_post_return(&self, wrapped: u32, params: u32) -> wasm_encoder::Function {
        use wasm_encoder::Instruction as I;
        let mut f = wasm_encoder::Function::new(track::RESTORE_LOCALS);
        for p in 0..params {
            f.instruction(&I::LocalGet(p));
        }
        f.instruction(&I::Call(wrapped));
        self.restore(&mut f, params, &I::Return);
        f.instruction(&I::End);
        f
    }

    /// A `realloc` `wrapped` that marks the block it returns dirty: the
    /// host writes into it.
    fn marking_realloc(wrapped: u32, plan: &track::Plan) -> wasm_encoder::Function {
        use wasm_encoder::Instruction as I;
        let mut f = wasm_encoder::Function::new([(1, wasm_encoder::ValType::I32)]);
        f.instruction(&I::LocalGet(0))
            .instruction(&I::LocalGet(1))
            .instruction(&I::LocalGet(2))
            .instruction(&I::LocalGet(3))
            .instruction(&I::Call(wrapped))
            .instruction(&I::LocalTee(4))
            .instruction(&I::LocalGet(4))
            .instruction(&I::LocalGet(3))
            .instruction(&I::Call(plan.mark))
            .instruction(&I::End);
        f
    }

    /// Appends `then` if memory 0 is not at its initial size.
    fn if_grown(&self, f: &mut wasm_encoder::Function, then: &wasm_encoder::Instruction) {
        use wasm_encoder::Instruction as I;
        f.instruction(&I::MemorySize(0))
            .instruction(&I::I32Const(self.facts.initial_pages as i32))
            .instruction(&I::I32Ne)
            .instruction(&I::If(wasm_encoder::BlockType::Empty))
            .instruction(then)
            .instruction(&I::End);
    }

    /// Appends the reset: `grown` if memory 0 grew, else memory 1 (the
    /// dirty granules, or all of it) and the shadows into the guest's
    /// memory and globals. [`track::RESTORE_LOCALS`] start at `locals`.
    fn restore(
        &self,
        f: &mut wasm_encoder::Function,
        locals: u32,
        grown: &wasm_encoder::Instruction,
    ) {
        use wasm_encoder::Instruction as I;
        if self.has_memory {
            self.if_grown(f, grown);
            match self.plan {
                Some(plan) => track::restore(f, plan, locals),
                None => {
                    f.instruction(&I::I32Const(0))
                        .instruction(&I::I32Const(0))
                        .instruction(&I::I32Const((self.facts.initial_pages << 16) as u32 as i32))
                        .instruction(&I::MemoryCopy {
                            dst_mem: 0,
                            src_mem: 1,
                        });
                }
            }
        }
        for &(global, shadow) in self.globals {
            f.instruction(&I::GlobalGet(shadow))
                .instruction(&I::GlobalSet(global));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    fn refused(wat: &str) -> Option<String> {
        module_facts(&wat::parse_str(wat).unwrap()).unwrap().refusal
    }

    #[test]
    fn refuses_modules_whose_state_it_cannot_restore() {
        assert!(refused("(module (memory 1) (global (mut i32) (i32.const 0)))").is_none());
        assert!(refused(
            "(module (table 1 funcref) (func (table.set 0 (i32.const 0) (ref.null func))))"
        )
        .is_some_and(|w| w.contains("table.set")));
        assert!(refused("(module (memory 1) (data \"x\") (func (data.drop 0)))").is_some());
        assert!(refused("(module (import \"a\" \"g\" (global (mut i32))))").is_some());
        assert!(refused("(module (memory 1 1 shared))").is_some());
        assert!(refused("(module (memory 1) (memory 1))").is_some());
        assert!(refused("(module (memory 5))").is_some_and(|w| w.contains("320 KiB")));
        assert!(refused("(module (func) (start 0))").is_some());
    }

    /// A component whose `bump` changes a data-segment word, a zeroed word
    /// and a mutable global, and whose `grow` grows its memory.
    const STATEFUL: &str = r#"
        (component
          (core module $m
            (memory (export "memory") 1)
            (global $g (mut i32) (i32.const 0))
            (data (i32.const 16) "\05\00\00\00")
            (func (export "bump") (result i32)
              (global.set $g (i32.add (global.get $g) (i32.const 1)))
              (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (i32.const 1)))
              (i32.store (i32.const 60000) (i32.add (i32.load (i32.const 60000)) (i32.const 1)))
              (i32.add (global.get $g)
                (i32.add (i32.load (i32.const 16)) (i32.load (i32.const 60000)))))
            (func (export "grow") (drop (memory.grow (i32.const 1)))))
          (core instance $i (instantiate $m))
          (func (export "bump") (result u32) (canon lift (core func $i "bump")))
          (func (export "grow") (canon lift (core func $i "grow"))))
    "#;

    #[test]
    fn the_reset_puts_back_what_instantiation_made() {
        let bytes = instrument(&wat::parse_str(STATEFUL).unwrap(), &[])
            .unwrap()
            .bytes;
        let (mut store, instance) = instance_of(&bytes);
        let bump = instance
            .get_typed_func::<(), (u32,)>(&mut store, "bump")
            .unwrap();
        let grow = instance
            .get_typed_func::<(), ()>(&mut store, "grow")
            .unwrap();
        let reset = instance
            .get_typed_func::<(), ()>(&mut store, RESET_EXPORT)
            .unwrap();
        let snapshot = instance
            .get_typed_func::<(), ()>(&mut store, SNAPSHOT_EXPORT)
            .unwrap();
        // Global 1 + data word 6 + zeroed word 1.
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        assert_eq!(bump.call(&mut store, ()).unwrap(), (11,));
        // Before any snapshot, a reset restores what instantiation made.
        reset.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        reset.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        // After one, what the snapshot saw: global 1, data word 6, word 1.
        snapshot.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (11,));
        assert_eq!(bump.call(&mut store, ()).unwrap(), (14,));
        reset.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (11,));
        reset.call(&mut store, ()).unwrap();
        // A grown memory cannot be put back or snapshotted: both trap.
        grow.call(&mut store, ()).unwrap();
        assert!(reset.call(&mut store, ()).is_err());
        assert!(snapshot.call(&mut store, ()).is_err());
    }

    /// `count` and `peek` return a counter they bump (in memory and in a
    /// global) and share one post-return; `grow` grows the memory and has
    /// its own.
    const POST_RETURNS: &str = r#"
        (component
          (core module $m
            (memory (export "memory") 1)
            (global $g (mut i32) (i32.const 0))
            (func $count (export "count") (result i32)
              (global.set $g (i32.add (global.get $g) (i32.const 1)))
              (i32.store (i32.const 100) (i32.add (i32.load (i32.const 100)) (i32.const 1)))
              (i32.add (global.get $g) (i32.load (i32.const 100))))
            (func (export "post") (param i32))
            (func (export "grow") (result i32)
              (drop (memory.grow (i32.const 1)))
              (call $count))
            (func (export "post-grow") (param i32)))
          (core instance $i (instantiate $m))
          (func (export "count") (result u32)
            (canon lift (core func $i "count") (post-return (func $i "post"))))
          (func (export "peek") (result u32)
            (canon lift (core func $i "count") (post-return (func $i "post"))))
          (func (export "grow") (result u32)
            (canon lift (core func $i "grow") (post-return (func $i "post-grow")))))
    "#;

    fn instance_of(bytes: &[u8]) -> (Store<()>, wasmtime::component::Instance) {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let component = Component::new(&engine, bytes).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine)
            .instantiate(&mut store, &component)
            .unwrap();
        (store, instance)
    }

    #[test]
    fn folded_post_returns_reset_after_each_call() {
        let wat = wat::parse_str(POST_RETURNS).unwrap();
        let call = |store: &mut Store<()>, instance: &wasmtime::component::Instance, name| {
            instance
                .get_typed_func::<(), (u32,)>(&mut *store, name)
                .unwrap()
                .call(&mut *store, ())
                .map(|(n,)| n)
        };

        // Not asked to fold: calls see the state earlier ones left.
        let out = instrument(&wat, &[]).unwrap();
        assert!(out.folded.is_empty());
        let (mut store, instance) = instance_of(&out.bytes);
        assert_eq!(call(&mut store, &instance, "count").unwrap(), 2);
        assert_eq!(call(&mut store, &instance, "count").unwrap(), 4);

        // `count` alone asked for: its post-return also serves `peek`,
        // whose callers do not expect a reset, so nothing is folded.
        assert!(instrument(&wat, &["count"]).unwrap().folded.is_empty());

        // Both: every call starts from what instantiation made.
        let out = instrument(&wat, &["count", "peek", "grow", "absent"]).unwrap();
        assert_eq!(out.folded, ["count", "peek", "grow"]);
        let (mut store, instance) = instance_of(&out.bytes);
        for name in ["count", "count", "peek", "count"] {
            assert_eq!(call(&mut store, &instance, name).unwrap(), 2, "{name}");
        }
        // A call that grew the memory still succeeds; its post-return
        // leaves the state alone (the host drops such an instance).
        assert_eq!(call(&mut store, &instance, "grow").unwrap(), 2);
        assert_eq!(call(&mut store, &instance, "count").unwrap(), 4);
    }

    /// A component whose exports write memory every way a call can: guest
    /// stores (one straddling a granule boundary, one before `return`, one
    /// before a branch out of the body), `memory.fill`, `memory.copy`, the
    /// host lowering a string argument (through `realloc`), and the host
    /// writing an import's results (through `realloc` and the result
    /// pointer the guest passes), with the import reached as wit-component
    /// reaches it (a shim module's table, filled by a fixup module).
    const WRITERS: &str = r#"
        (component
          (import "get" (func $get (result string)))
          (core module $shim
            (table (export "$imports") 1 1 funcref)
            (type $t (func (param i32)))
            (func (export "get") (param i32)
              (call_indirect (type $t) (local.get 0) (i32.const 0))))
          (core instance $shim (instantiate $shim))
          (core module $m
            (import "host" "get" (func $get (param i32)))
            (memory (export "memory") 1)
            (global $bump (mut i32) (i32.const 40000))
            (data (i32.const 2048) "\01\02\03\04\05\06\07\08")
            (func (export "realloc") (param i32 i32 i32 i32) (result i32)
              (global.get $bump)
              (global.set $bump (i32.add (global.get $bump) (local.get 3))))
            (func (export "store32") (param $a i32) (param $v i32)
              (i32.store (local.get $a) (local.get $v)))
            (func (export "store64") (param $a i32) (param $v i64)
              (i64.store offset=4 (local.get $a) (local.get $v)))
            (func (export "store-return") (param $a i32) (result i32)
              (block
                (i32.store8 (local.get $a) (i32.const 7))
                (return (i32.const 1)))
              (i32.const 2))
            (func (export "store-branch") (param $a i32)
              (block
                (i32.store16 (local.get $a) (i32.const 7))
                (br_if 1 (i32.const 1)))
              unreachable)
            (func (export "fill") (param $a i32) (param $n i32)
              (memory.fill (local.get $a) (i32.const 171) (local.get $n)))
            (func (export "copy") (param $d i32) (param $s i32) (param $n i32)
              (memory.copy (local.get $d) (local.get $s) (local.get $n)))
            (func (export "fetch") (param $p i32) (call $get (local.get $p)))
            (func (export "take") (param i32 i32))
            (func (export "load") (param $a i32) (result i32) (i32.load (local.get $a))))
          (core instance $main (instantiate $m
            (with "host" (instance (export "get" (func $shim "get"))))))
          (alias core export $main "memory" (core memory $mem))
          (alias core export $main "realloc" (core func $realloc))
          (core func $lowered (canon lower (func $get) (memory $mem) (realloc $realloc)))
          (core module $fixup
            (import "" "get" (func (param i32)))
            (import "" "$imports" (table 1 1 funcref))
            (elem (i32.const 0) func 0))
          (core instance (instantiate $fixup
            (with "" (instance (export "get" (func $lowered))
                               (export "$imports" (table $shim "$imports"))))))
          (func (export "store32") (param "a" u32) (param "v" u32)
            (canon lift (core func $main "store32")))
          (func (export "store64") (param "a" u32) (param "v" u64)
            (canon lift (core func $main "store64")))
          (func (export "store-return") (param "a" u32) (result u32)
            (canon lift (core func $main "store-return")))
          (func (export "store-branch") (param "a" u32)
            (canon lift (core func $main "store-branch")))
          (func (export "fill") (param "a" u32) (param "n" u32)
            (canon lift (core func $main "fill")))
          (func (export "copy") (param "d" u32) (param "s" u32) (param "n" u32)
            (canon lift (core func $main "copy")))
          (func (export "fetch") (param "p" u32) (canon lift (core func $main "fetch")))
          (func (export "take") (param "s" string)
            (canon lift (core func $main "take") (memory $mem) (realloc $realloc)))
          (func (export "load") (param "a" u32) (result u32)
            (canon lift (core func $main "load"))))
    "#;

    #[test]
    fn a_tracked_reset_puts_back_every_write() {
        let out = instrument(&wat::parse_str(WRITERS).unwrap(), &[]).unwrap();
        assert_eq!(out.untracked, None);
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let component = Component::new(&engine, &out.bytes).unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = Linker::new(&engine);
        linker
            .root()
            .func_wrap("get", |_, ()| {
                Ok(("a secret of the last request".to_string(),))
            })
            .unwrap();
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let reset = instance
            .get_typed_func::<(), ()>(&mut store, RESET_EXPORT)
            .unwrap();
        let load = instance
            .get_typed_func::<(u32,), (u32,)>(&mut store, "load")
            .unwrap();
        // Every word a call below writes, and its neighbours.
        let watched: Vec<u32> = [
            3000, 1020, 1024, 1028, 5000, 6000, 10_000, 11_996, 12_996, 2048, 20_000, 20_096,
            40_000, 40_020, 50_000, 50_004,
        ]
        .into_iter()
        .flat_map(|a| [a - 4, a, a + 4])
        .collect();
        let before = |store: &mut Store<()>| -> Vec<u32> {
            watched
                .iter()
                .map(|a| load.call(&mut *store, (*a,)).unwrap().0)
                .collect()
        };
        let clean = before(&mut store);
        assert_eq!(
            clean[watched.iter().position(|a| *a == 2048).unwrap()],
            0x04030201
        );

        fn call<P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower>(
            store: &mut Store<()>,
            instance: &wasmtime::component::Instance,
            name: &str,
            params: P,
        ) {
            let f = instance.get_func(&mut *store, name).unwrap();
            let f = f.typed::<P, ()>(&*store).unwrap();
            f.call(&mut *store, params).unwrap();
        }
        call(&mut store, &instance, "store32", (3000u32, 0xdead_beefu32));
        // Bytes 1022..1030: across the boundary of granules 0 and 1.
        call(&mut store, &instance, "store64", (1018u32, u64::MAX));
        let early = instance
            .get_typed_func::<(u32,), (u32,)>(&mut store, "store-return")
            .unwrap();
        assert_eq!(early.call(&mut store, (5000,)).unwrap(), (1,));
        call(&mut store, &instance, "store-branch", (6000u32,));
        call(&mut store, &instance, "fill", (10_000u32, 3000u32));
        call(&mut store, &instance, "copy", (20_000u32, 2048u32, 100u32));
        call(&mut store, &instance, "take", ("x".repeat(24),));
        call(&mut store, &instance, "fetch", (50_000u32,));
        let dirty = before(&mut store);
        for (i, a) in watched.iter().enumerate() {
            if [
                3000, 1020, 1024, 1028, 5000, 6000, 10_000, 11_996, 20_000, 20_004, 40_000, 40_020,
                50_000, 50_004,
            ]
            .contains(a)
            {
                assert_ne!(dirty[i], clean[i], "the call did not write {a}");
            }
        }
        reset.call(&mut store, ()).unwrap();
        assert_eq!(before(&mut store), clean);
    }

    #[test]
    fn refuses_components_it_cannot_reset() {
        let refuse = |wat: &str| {
            instrument(&wat::parse_str(wat).unwrap(), &[])
                .err()
                .unwrap()
        };
        // Two stateful modules.
        assert!(refuse(
            r#"(component
                 (core module $a (memory 1))
                 (core module $b (memory 1))
                 (core instance (instantiate $a))
                 (core instance (instantiate $b)))"#
        )
        .contains("more than one"));
        // One stateful module, instantiated twice.
        assert!(refuse(
            r#"(component
                 (core module $a (memory 1))
                 (core instance (instantiate $a))
                 (core instance (instantiate $a)))"#
        )
        .contains("exactly once"));
        // The export name is taken.
        assert!(refuse(
            r#"(component
                 (core module $a (memory 1) (func (export "f")))
                 (core instance $i (instantiate $a))
                 (func (export "edgegate-reset") (canon lift (core func $i "f"))))"#
        )
        .contains("already exports"));
        assert!(refuse(
            r#"(component
                 (core module $a (memory 1) (func (export "f")))
                 (core instance $i (instantiate $a))
                 (func (export "edgegate-snapshot") (canon lift (core func $i "f"))))"#
        )
        .contains("already exports `edgegate-snapshot`"));
    }

    #[test]
    fn first_party_header_filters_get_a_reset() {
        for (name, bytes) in super::super::embedded::EMBEDDED {
            match instrument(bytes, &super::super::CALL_EXPORTS) {
                Ok(out) => {
                    assert!(out.bytes.len() > bytes.len(), "{name}");
                    assert_eq!(out.untracked, None, "{name}");
                    // wit-bindgen gives each phase export a post-return.
                    assert_eq!(out.folded, super::super::CALL_EXPORTS, "{name}");
                }
                // It starts with 1.7 MiB of memory: fresh instances.
                Err(why) if *name == "image-transform" => {
                    assert!(why.contains("KiB of memory"), "{why}")
                }
                Err(why) => panic!("{name}: {why}"),
            }
        }
    }
}
