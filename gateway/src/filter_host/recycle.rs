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
//! - Into the stateful module goes a function, generated here, that traps if
//!   the memory grew past its initial size (the host then drops the
//!   instance: a wasm memory cannot shrink), zeroes the memory the data
//!   segments do not cover, copies every active data segment back (from passive duplicates added
//!   beside them) and sets every mutable global to its initial value: the
//!   state instantiation produced. It is lifted as the component export
//!   [`RESET_EXPORT`].
//!
//! The host calls it after every successful call whose guest left no
//! resource handle open and did not grow its memory; anything else (a
//! trap, a timeout, a failed reset) drops the instance. Component-level
//! state needs nothing: a call that returned has released its borrows and
//! left the instance enterable, and an open handle is refused above.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::{Operator, Parser, Payload};

/// The export the reset function is lifted as.
pub const RESET_EXPORT: &str = "edgegate-reset";

/// Names precompiled artifacts of instrumented components in the cache
/// directory; a change to the instrumentation changes it.
pub const ARTIFACT_TAG: &str = "-recycle2";

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
    if exported.iter().any(|n| n == RESET_EXPORT) {
        return Err(format!("it already exports `{RESET_EXPORT}`"));
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
    aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
        instance: core_instance,
        kind: wasm_encoder::ExportKind::Func,
        name: RESET_EXPORT,
    });
    out.section(&aliases);
    let mut func_types = wasm_encoder::ComponentTypeSection::new();
    func_types
        .function()
        .params(std::iter::empty::<(&str, wasm_encoder::ComponentValType)>())
        .result(None);
    out.section(&func_types);
    let mut canon = wasm_encoder::CanonicalFunctionSection::new();
    canon.lift(
        types.function_count(),
        types.component_type_count(),
        std::iter::empty::<wasm_encoder::CanonicalOption>(),
    );
    out.section(&canon);
    let mut exports = wasm_encoder::ComponentExportSection::new();
    exports.export(
        RESET_EXPORT,
        wasm_encoder::ComponentExportKind::Func,
        types.component_function_count(),
        None,
    );
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

/// `module` with the reset function added and exported as
/// [`RESET_EXPORT`].
fn rewrite_module(module: &[u8], facts: &ModuleFacts) -> Result<Vec<u8>, String> {
    let mut rt = RoundtripReencoder;
    let err = |e: wasm_encoder::reencode::Error| e.to_string();
    let mut out = wasm_encoder::Module::new();
    let mut type_count = 0u32;
    let mut imported_funcs = 0u32;
    let mut defined_funcs = 0u32;
    let mut reset_type = None;
    let mut data_count_done = false;
    let mut exported = false;
    // Active segments, as (offset expression, bytes); the reset re-copies
    // them from passive duplicates appended after the originals.
    let mut segments: Vec<(wasmparser::ConstExpr, &[u8])> = Vec::new();
    let mut data_total = 0u32;
    let mut mutable_globals: Vec<(u32, wasmparser::ConstExpr)> = Vec::new();
    let mut imported_globals = 0u32;
    // Data segments are only known after the code section, so they are
    // counted in a first pass.
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
                reset_type = Some(type_count);
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
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                let mut section = wasm_encoder::FunctionSection::new();
                defined_funcs = reader.count();
                rt.parse_function_section(&mut section, reader.clone())
                    .map_err(err)?;
                section.function(reset_type.ok_or("no type section")?);
                out.section(&section);
                continue;
            }
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.clone().into_iter().enumerate() {
                    let global = global.map_err(|e| e.to_string())?;
                    if global.ty.mutable {
                        mutable_globals.push((imported_globals + i as u32, global.init_expr));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                let mut section = wasm_encoder::ExportSection::new();
                for export in reader.clone() {
                    if export.map_err(|e| e.to_string())?.name == RESET_EXPORT {
                        return Err(format!("a core module already exports `{RESET_EXPORT}`"));
                    }
                }
                rt.parse_export_section(&mut section, reader.clone())
                    .map_err(err)?;
                section.export(
                    RESET_EXPORT,
                    wasm_encoder::ExportKind::Func,
                    imported_funcs + defined_funcs,
                );
                exported = true;
                out.section(&section);
                continue;
            }
            Payload::DataCountSection { .. } => {
                out.section(&wasm_encoder::DataCountSection {
                    count: data_total + segments.len() as u32,
                });
                data_count_done = true;
                continue;
            }
            Payload::CodeSectionStart { count, range, .. } => {
                if !data_count_done {
                    out.section(&wasm_encoder::DataCountSection {
                        count: data_total + segments.len() as u32,
                    });
                    data_count_done = true;
                }
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
                section.function(&reset_function(
                    &mut rt,
                    facts,
                    &segments,
                    data_total,
                    &mutable_globals,
                )?);
                out.section(&section);
                continue;
            }
            Payload::CodeSectionEntry(_) => continue,
            Payload::DataSection(reader) => {
                let mut section = wasm_encoder::DataSection::new();
                rt.parse_data_section(&mut section, reader.clone())
                    .map_err(err)?;
                for (_, bytes) in &segments {
                    section.passive(bytes.iter().copied());
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
    if !exported || reset_type.is_none() || defined_funcs == 0 {
        return Err("the stateful module has no exports, types or code".into());
    }
    Ok(out.finish())
}

/// The reset: trap if the memory grew, zero it, re-copy the active data
/// segments (from their passive duplicates, numbered from `first_copy`),
/// then restore every mutable global.
fn reset_function(
    rt: &mut RoundtripReencoder,
    facts: &ModuleFacts,
    segments: &[(wasmparser::ConstExpr, &[u8])],
    first_copy: u32,
    globals: &[(u32, wasmparser::ConstExpr)],
) -> Result<wasm_encoder::Function, String> {
    use wasm_encoder::Instruction as I;
    let mut f = wasm_encoder::Function::new([]);
    let const_expr = |f: &mut wasm_encoder::Function,
                      rt: &mut RoundtripReencoder,
                      expr: &wasmparser::ConstExpr|
     -> Result<(), String> {
        let mut ops = expr.get_operators_reader();
        while !ops.eof() {
            let op = ops.read().map_err(|e| e.to_string())?;
            if matches!(op, Operator::End) {
                break;
            }
            f.instruction(&rt.instruction(op).map_err(|e| e.to_string())?);
        }
        Ok(())
    };
    if facts.initial_pages > 0 || !segments.is_empty() {
        f.instruction(&I::MemorySize(0))
            .instruction(&I::I32Const(facts.initial_pages as i32))
            .instruction(&I::I32Ne)
            .instruction(&I::If(wasm_encoder::BlockType::Empty))
            .instruction(&I::Unreachable)
            .instruction(&I::End);
        // Zero what the data segments do not cover (they are copied back
        // whole just after).
        for (start, len) in gaps(facts.initial_pages << 16, segments) {
            f.instruction(&I::I32Const(start as u32 as i32))
                .instruction(&I::I32Const(0))
                .instruction(&I::I32Const(len as u32 as i32))
                .instruction(&I::MemoryFill(0));
        }
    }
    for (i, (offset, bytes)) in segments.iter().enumerate() {
        const_expr(&mut f, rt, offset)?;
        f.instruction(&I::I32Const(0))
            .instruction(&I::I32Const(bytes.len() as i32))
            .instruction(&I::MemoryInit {
                mem: 0,
                data_index: first_copy + i as u32,
            });
    }
    for (index, init) in globals {
        const_expr(&mut f, rt, init)?;
        f.instruction(&I::GlobalSet(*index));
    }
    f.instruction(&I::End);
    Ok(f)
}

/// The ranges of `[0, size)` no segment at a constant offset covers, as
/// (start, length); all of it if some segment's offset is not a constant.
fn gaps(size: u64, segments: &[(wasmparser::ConstExpr, &[u8])]) -> Vec<(u64, u64)> {
    let mut covered = Vec::new();
    for (offset, bytes) in segments {
        let mut ops = offset.get_operators_reader();
        match (ops.read(), ops.read()) {
            (Ok(Operator::I32Const { value }), Ok(Operator::End)) => {
                let start = u64::from(value as u32);
                covered.push((start, start + bytes.len() as u64));
            }
            _ => return vec![(0, size)],
        }
    }
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (start, end) in covered {
        if start > at {
            out.push((at, start.min(size) - at));
        }
        at = at.max(end);
        if at >= size {
            break;
        }
    }
    if at < size {
        out.push((at, size - at));
    }
    out.retain(|&(_, len)| len > 0);
    out
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
    fn zeroes_only_what_no_segment_covers() {
        let module = wat::parse_str(
            r#"(module (memory 1)
                 (data (i32.const 100) "abcd")
                 (data (i32.const 102) "xyzw")
                 (data (i32.const 65530) "123456"))"#,
        )
        .unwrap();
        let mut segments = Vec::new();
        for payload in Parser::new(0).parse_all(&module) {
            if let Payload::DataSection(reader) = payload.unwrap() {
                for data in reader {
                    let data = data.unwrap();
                    if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                        segments.push((offset_expr, data.data));
                    }
                }
            }
        }
        assert_eq!(gaps(65536, &segments), vec![(0, 100), (106, 65530 - 106)]);
        assert_eq!(gaps(65536, &[]), vec![(0, 65536)]);
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
        // Global 1 + data word 6 + zeroed word 1.
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        assert_eq!(bump.call(&mut store, ()).unwrap(), (11,));
        reset.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        reset.call(&mut store, ()).unwrap();
        assert_eq!(bump.call(&mut store, ()).unwrap(), (8,));
        // A grown memory cannot be put back: the reset traps.
        grow.call(&mut store, ()).unwrap();
        assert!(reset.call(&mut store, ()).is_err());
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
