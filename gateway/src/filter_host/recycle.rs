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
//!     shrink), copies the second memory over the first (`memory.copy`)
//!     and every shadow into its global;
//!   - the snapshot ([`SNAPSHOT_EXPORT`]) copies the other way.
//!
//! The host calls the snapshot once per instance, right after
//! instantiation and the guest's `phases` export, before the instance has
//! seen any request: with the store holding no request's facts, so a
//! snapshot holds only what the route's config and the guest's own
//! initialisation made (its config parsed once per instance instead of per
//! request, as Wizer pre-initialises, but at run time). It calls the reset
//! after every successful call whose guest left no resource handle open and
//! did not grow its memory; anything else (a trap, a timeout, a failed
//! reset) drops the instance. Component-level state needs nothing: a call
//! that returned has released its borrows and left the instance enterable,
//! and an open handle is refused above.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::{Operator, Parser, Payload};

/// The export the reset function is lifted as.
pub const RESET_EXPORT: &str = "edgegate-reset";

/// The export the snapshot function is lifted as: it makes the instance's
/// current state the one every later reset restores.
pub const SNAPSHOT_EXPORT: &str = "edgegate-snapshot";

/// Names precompiled artifacts of instrumented components in the cache
/// directory; a change to the instrumentation changes it.
pub const ARTIFACT_TAG: &str = "-recycle3";

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
}

/// The component with a reset export added, or why it cannot get one (the
/// filter then runs in fresh instances).
pub fn instrument(component: &[u8]) -> Result<Vec<u8>, String> {
    let types = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(component)
        .map_err(|e| format!("invalid component: {e}"))?;
    let types = types.as_ref();

    // Top-level sections, the core modules among them, and core instances.
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut modules: Vec<std::ops::Range<usize>> = Vec::new();
    let mut instantiations: Vec<u32> = Vec::new();
    let mut exported = Vec::new();
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
                    exported.push(export.map_err(|e| e.to_string())?.name.name.to_string());
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

    let module = rewrite_module(&component[modules[module_index].clone()], &facts)?;

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
    Ok(bytes)
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
/// exported), so only these two functions reach them.
fn rewrite_module(module: &[u8], facts: &ModuleFacts) -> Result<Vec<u8>, String> {
    let mut rt = RoundtripReencoder;
    let err = |e: wasm_encoder::reencode::Error| e.to_string();
    let mut out = wasm_encoder::Module::new();
    let mut type_count = 0u32;
    let mut imported_funcs = 0u32;
    let mut defined_funcs = 0u32;
    let mut added_type = None;
    let mut exported = false;
    let mut has_memory = false;
    // Active segments, as (offset expression, bytes): copied into memory 1
    // as well.
    let mut segments: Vec<(wasmparser::ConstExpr, &[u8])> = Vec::new();
    let mut data_total = 0u32;
    // Mutable globals, as (index, shadow index).
    let mut mutable_globals: Vec<(u32, u32)> = Vec::new();
    let mut imported_globals = 0u32;
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::DataSection(reader) = payload.map_err(|e| e.to_string())? {
            for data in reader {
                let data = data.map_err(|e| e.to_string())?;
                if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                    segments.push((offset_expr, data.data));
                }
                data_total += 1;
            }
        }
    }

    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| e.to_string())?;
        match &payload {
            Payload::TypeSection(reader) => {
                let mut section = wasm_encoder::TypeSection::new();
                for group in reader.clone() {
                    let group = group.map_err(|e| e.to_string())?;
                    type_count += group.types().len() as u32;
                    rt.parse_recursive_type_group(section.ty(), group)
                        .map_err(err)?;
                }
                section.ty().function([], []);
                added_type = Some(type_count);
                out.section(&section);
                continue;
            }
            Payload::ImportSection(reader) => {
                for import in reader.clone().into_imports() {
                    match import.map_err(|e| e.to_string())?.ty {
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_) => {
                            imported_funcs += 1
                        }
                        wasmparser::TypeRef::Global(_) => imported_globals += 1,
                        wasmparser::TypeRef::Memory(_) => {
                            return Err("its stateful module imports a memory".into())
                        }
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                let mut section = wasm_encoder::FunctionSection::new();
                defined_funcs = reader.count();
                rt.parse_function_section(&mut section, reader.clone())
                    .map_err(err)?;
                let ty = added_type.ok_or("no type section")?;
                section.function(ty).function(ty);
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
                    let global = global.map_err(|e| e.to_string())?;
                    if global.ty.mutable {
                        let shadow = imported_globals + count + mutable_globals.len() as u32;
                        mutable_globals.push((imported_globals + i as u32, shadow));
                        section.global(
                            rt.global_type(global.ty).map_err(err)?,
                            &rt.const_expr(global.init_expr).map_err(err)?,
                        );
                    }
                }
                out.section(&section);
                continue;
            }
            Payload::ExportSection(reader) => {
                let mut section = wasm_encoder::ExportSection::new();
                for export in reader.clone() {
                    let name = export.map_err(|e| e.to_string())?.name;
                    if name == RESET_EXPORT || name == SNAPSHOT_EXPORT {
                        return Err(format!("a core module already exports `{name}`"));
                    }
                }
                rt.parse_export_section(&mut section, reader.clone())
                    .map_err(err)?;
                let first = imported_funcs + defined_funcs;
                section
                    .export(RESET_EXPORT, wasm_encoder::ExportKind::Func, first)
                    .export(SNAPSHOT_EXPORT, wasm_encoder::ExportKind::Func, first + 1);
                exported = true;
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
                .map_err(|e| e.to_string())?;
                if reader.count() != *count {
                    return Err("inconsistent code section".into());
                }
                for body in reader {
                    let body = body.map_err(|e| e.to_string())?;
                    section.raw(&module[body.range()]);
                }
                section.function(&state_copy(
                    facts,
                    has_memory,
                    &mutable_globals,
                    Copy::Restore,
                ));
                section.function(&state_copy(
                    facts,
                    has_memory,
                    &mutable_globals,
                    Copy::Snapshot,
                ));
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
    if !exported || added_type.is_none() || defined_funcs == 0 {
        return Err("the stateful module has no exports, types or code".into());
    }
    if !segments.is_empty() && !has_memory {
        return Err("its data segments have no memory of its own".into());
    }
    Ok(out.finish())
}

/// Which way [`state_copy`] copies.
#[derive(Clone, Copy, PartialEq)]
enum Copy {
    /// Memory 1 and the shadow globals into the guest's: the reset.
    Restore,
    /// The guest's memory and globals into memory 1 and the shadows.
    Snapshot,
}

/// The reset or the snapshot: trap if memory 0 is not at its initial size
/// (a grown wasm memory cannot shrink back), copy the whole memory one way
/// (`memory.copy` between memories 0 and 1), then every mutable global.
fn state_copy(
    facts: &ModuleFacts,
    has_memory: bool,
    globals: &[(u32, u32)],
    way: Copy,
) -> wasm_encoder::Function {
    use wasm_encoder::Instruction as I;
    let mut f = wasm_encoder::Function::new([]);
    if has_memory {
        let (dst_mem, src_mem) = match way {
            Copy::Restore => (0, 1),
            Copy::Snapshot => (1, 0),
        };
        f.instruction(&I::MemorySize(0))
            .instruction(&I::I32Const(facts.initial_pages as i32))
            .instruction(&I::I32Ne)
            .instruction(&I::If(wasm_encoder::BlockType::Empty))
            .instruction(&I::Unreachable)
            .instruction(&I::End)
            .instruction(&I::I32Const(0))
            .instruction(&I::I32Const(0))
            .instruction(&I::I32Const((facts.initial_pages << 16) as u32 as i32))
            .instruction(&I::MemoryCopy { dst_mem, src_mem });
    }
    for &(global, shadow) in globals {
        let (dst, src) = match way {
            Copy::Restore => (global, shadow),
            Copy::Snapshot => (shadow, global),
        };
        f.instruction(&I::GlobalGet(src))
            .instruction(&I::GlobalSet(dst));
    }
    f.instruction(&I::End);
    f
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
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let bytes = instrument(&wat::parse_str(STATEFUL).unwrap()).unwrap();
        let component = Component::new(&engine, &bytes).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine)
            .instantiate(&mut store, &component)
            .unwrap();
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

    #[test]
    fn refuses_components_it_cannot_reset() {
        let refuse = |wat: &str| instrument(&wat::parse_str(wat).unwrap()).unwrap_err();
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
            match instrument(bytes) {
                Ok(out) => assert!(out.len() > bytes.len(), "{name}"),
                // It starts with 1.7 MiB of memory: fresh instances.
                Err(why) if *name == "image-transform" => {
                    assert!(why.contains("KiB of memory"), "{why}")
                }
                Err(why) => panic!("{name}: {why}"),
            }
        }
    }
}
