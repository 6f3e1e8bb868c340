//! Dirty granules: which parts of a recycled instance's memory a call may
//! have written, so that its reset copies back those instead of the whole
//! memory.
//!
//! Copying the whole initial memory back was the largest single cost of a
//! recycled filter call through the proxy: 64 KiB per call, ~0.85 µs with
//! the caches as a proxied request leaves them (`perf`, session 9 in
//! `loadtest/RESULTS.md`), while a header filter's call writes a few KiB
//! (its stack, its arena). So the stateful module's memory is cut into 64
//! granules (1 KiB for a 64 KiB memory) and a mutable `i64` global holds
//! one bit per granule that may differ from the saved state. Every way a
//! byte of memory 0 can change during a call sets the bit of its granule
//! before the reset runs:
//!
//! - a guest store: every store instruction of the module is preceded by
//!   code that sets its address's bit in a function-local mask, which the
//!   function ORs into the global when it returns (`return`, `return_call*`,
//!   its end, or a branch out of its body). A call that does not return
//!   traps, and a trapped instance is never reused. A store wider than a
//!   byte may spill into the next granule: a reset restores [`SPILL`]
//!   bytes past every dirty run.
//! - `memory.fill` and `memory.copy`: the destination range is marked.
//! - the host: it writes into guest memory only where the canonical ABI
//!   lets it, into blocks the guest's `realloc` returned (the export named
//!   as `realloc` in a `canon` option is wrapped to mark the block it
//!   returns) and into the result area an import call passes as its last
//!   argument (each call of an import that may take one marks
//!   [`RESULT_AREA`] bytes from that argument; every function the component
//!   lowers has a smaller result area, which [`instrument`] checks from the
//!   component's types).
//!
//! Whatever this cannot see refuses tracking, and the reset copies the
//! whole memory as before: atomics, exceptions and stack switching (a
//! module that validates only with those features), an imported function
//! reachable through a table or `ref.func` (an indirect call would skip the
//! marking), a function with several results, another core module that
//! imports a memory, a `realloc` or lowered function this walk cannot
//! trace, async canonical options, or a result area larger than
//! [`RESULT_AREA`].
//!
//! [`instrument`]: super::instrument

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Instruction as I, ValType};
use wasmparser::{Operator, Parser, Payload};

/// Bytes past a dirty run a reset restores too: the widest store (`v128`)
/// starting in the run's last granule ends at most 15 bytes into the next.
pub const SPILL: u32 = 16;

/// Bytes from an import call's result pointer that the call marks: more
/// than any function the component lowers has as its result area (the
/// largest of WASI 0.2's is `descriptor-stat`'s, about 100 bytes).
pub const RESULT_AREA: u32 = 1024;

/// The smallest granule: 1 KiB, a 64 KiB memory's 64th.
const MIN_SHIFT: u32 = 10;

/// How a module's memory is tracked.
pub struct Plan {
    /// A granule is `1 << shift` bytes.
    pub shift: u32,
    /// The memory's initial size in bytes (64 granules or fewer).
    pub total: u32,
    /// The mask global.
    pub dirty: u32,
    /// The function marking a range: `(ptr: i32, len: i32)`.
    pub mark: u32,
    /// By imported function: whether a call of it may pass a result
    /// pointer (no results, a last `i32` parameter).
    pub result_pointer: Vec<bool>,
}

/// The granule shift for a memory of `total` bytes: 64 granules at most.
pub fn shift_for(total: u64) -> u32 {
    let mut shift = MIN_SHIFT;
    while total > 64 << shift {
        shift += 1;
    }
    shift
}

/// Why `module` (the stateful one) cannot be tracked, if it cannot.
pub fn refusal(module: &[u8]) -> Option<String> {
    let features = wasmparser::WasmFeatures::all()
        - wasmparser::WasmFeatures::THREADS
        - wasmparser::WasmFeatures::SHARED_EVERYTHING_THREADS
        - wasmparser::WasmFeatures::EXCEPTIONS
        - wasmparser::WasmFeatures::LEGACY_EXCEPTIONS
        - wasmparser::WasmFeatures::STACK_SWITCHING;
    if let Err(e) = wasmparser::Validator::new_with_features(features).validate_all(module) {
        return Some(format!("it needs a feature tracking does not follow: {e}"));
    }
    let mut imported = 0u32;
    let mut types: Vec<usize> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut check = || -> Result<(), String> {
        for payload in Parser::new(0).parse_all(module) {
            match payload.map_err(|e| e.to_string())? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for ty in group.map_err(|e| e.to_string())?.types() {
                            types.push(match &ty.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => f.results().len(),
                                _ => 0,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        if let wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_) =
                            import.map_err(|e| e.to_string())?.ty
                        {
                            imported += 1;
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        func_types.push(t.map_err(|e| e.to_string())?);
                    }
                    if func_types.iter().any(|t| types.get(*t as usize) > Some(&1)) {
                        return Err("a function returns several results".into());
                    }
                }
                Payload::ElementSection(reader) => {
                    for element in reader {
                        if let wasmparser::ElementItems::Functions(funcs) =
                            element.map_err(|e| e.to_string())?.items
                        {
                            for f in funcs {
                                if f.map_err(|e| e.to_string())? < imported {
                                    return Err("an imported function is in a table".into());
                                }
                            }
                        } else {
                            return Err("it has element expressions".into());
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                    while !ops.eof() {
                        if let Operator::RefFunc { function_index } =
                            ops.read().map_err(|e| e.to_string())?
                        {
                            if function_index < imported {
                                return Err("it takes a reference to an imported function".into());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    };
    check().err()
}

/// The value a store instruction writes, if `op` is one.
fn stored(op: &Operator) -> Option<(wasmparser::MemArg, wasmparser::ValType)> {
    use wasmparser::ValType as V;
    Some(match *op {
        Operator::I32Store { memarg }
        | Operator::I32Store8 { memarg }
        | Operator::I32Store16 { memarg } => (memarg, V::I32),
        Operator::I64Store { memarg }
        | Operator::I64Store8 { memarg }
        | Operator::I64Store16 { memarg }
        | Operator::I64Store32 { memarg } => (memarg, V::I64),
        Operator::F32Store { memarg } => (memarg, V::F32),
        Operator::F64Store { memarg } => (memarg, V::F64),
        Operator::V128Store { memarg }
        | Operator::V128Store8Lane { memarg, .. }
        | Operator::V128Store16Lane { memarg, .. }
        | Operator::V128Store32Lane { memarg, .. }
        | Operator::V128Store64Lane { memarg, .. } => (memarg, V::V128),
        _ => return None,
    })
}

/// `body` (of a function with `params` parameters and `results`) with its
/// writes marked, as the module docs say.
pub fn body(
    body: &wasmparser::FunctionBody,
    params: u32,
    results: &[wasmparser::ValType],
    plan: &Plan,
) -> Result<Function, String> {
    let mut rt = RoundtripReencoder;
    let err = |e: wasm_encoder::reencode::Error| e.to_string();
    let mut locals: Vec<(u32, ValType)> = Vec::new();
    let mut next = params;
    for local in body.get_locals_reader().map_err(|e| e.to_string())? {
        let (count, ty) = local.map_err(|e| e.to_string())?;
        locals.push((count, rt.val_type(ty).map_err(err)?));
        next += count;
    }
    // The function's mask, an address and a count, and one value of each
    // type a store may write (an `i32` value uses `b`).
    let (mask, a, b, c) = (next, next + 1, next + 2, next + 3);
    locals.push((1, ValType::I64));
    locals.push((3, ValType::I32));
    let value = |ty: wasmparser::ValType| match ty {
        wasmparser::ValType::I32 => b,
        wasmparser::ValType::I64 => next + 4,
        wasmparser::ValType::F32 => next + 5,
        wasmparser::ValType::F64 => next + 6,
        _ => next + 7,
    };
    locals.extend([
        (1, ValType::I64),
        (1, ValType::F32),
        (1, ValType::F64),
        (1, ValType::V128),
    ]);
    let mut f = Function::new(locals);
    let flush = |f: &mut Function| {
        f.instruction(&I::GlobalGet(plan.dirty))
            .instruction(&I::LocalGet(mask))
            .instruction(&I::I64Or)
            .instruction(&I::GlobalSet(plan.dirty));
    };
    // A block around the body: a branch out of the body lands on its end,
    // where the mask is flushed, as when the body falls through.
    f.instruction(&I::Block(match results {
        [] => wasm_encoder::BlockType::Empty,
        [ty] => wasm_encoder::BlockType::Result(rt.val_type(*ty).map_err(err)?),
        _ => return Err("a function returns several results".into()),
    }));
    let mut depth = 0u32;
    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
    while !ops.eof() {
        let op = ops.read().map_err(|e| e.to_string())?;
        if let Some((memarg, ty)) = stored(&op) {
            if memarg.memory != 0 {
                return Err("a store to another memory".into());
            }
            f.instruction(&I::LocalSet(value(ty)))
                .instruction(&I::LocalSet(a))
                .instruction(&I::LocalGet(mask))
                .instruction(&I::I64Const(1))
                .instruction(&I::LocalGet(a));
            if memarg.offset != 0 {
                // Wraps past 4 GiB, where the store itself traps.
                f.instruction(&I::I32Const(memarg.offset as u32 as i32))
                    .instruction(&I::I32Add);
            }
            f.instruction(&I::I32Const(plan.shift as i32))
                .instruction(&I::I32ShrU)
                .instruction(&I::I64ExtendI32U)
                .instruction(&I::I64Shl)
                .instruction(&I::I64Or)
                .instruction(&I::LocalSet(mask))
                .instruction(&I::LocalGet(a))
                .instruction(&I::LocalGet(value(ty)));
            f.instruction(&rt.instruction(op).map_err(err)?);
            continue;
        }
        match op {
            Operator::MemoryFill { .. } | Operator::MemoryCopy { .. } => {
                // (destination, value or source, count)
                f.instruction(&I::LocalSet(c))
                    .instruction(&I::LocalSet(b))
                    .instruction(&I::LocalSet(a))
                    .instruction(&I::LocalGet(a))
                    .instruction(&I::LocalGet(c))
                    .instruction(&I::Call(plan.mark))
                    .instruction(&I::LocalGet(a))
                    .instruction(&I::LocalGet(b))
                    .instruction(&I::LocalGet(c));
            }
            Operator::Call { function_index }
                if plan
                    .result_pointer
                    .get(function_index as usize)
                    .copied()
                    .unwrap_or(false) =>
            {
                f.instruction(&I::LocalTee(a))
                    .instruction(&I::LocalGet(a))
                    .instruction(&I::I32Const(RESULT_AREA as i32))
                    .instruction(&I::Call(plan.mark));
            }
            Operator::Return
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => flush(&mut f),
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
            Operator::End if depth == 0 => {
                f.instruction(&I::End);
                flush(&mut f);
                f.instruction(&I::End);
                continue;
            }
            Operator::End => depth -= 1,
            _ => {}
        }
        f.instruction(&rt.instruction(op).map_err(err)?);
    }
    Ok(f)
}

/// The function marking `[ptr, ptr + len)` dirty: `(ptr: i32, len: i32)`.
/// A range reaching past the tracked memory marks everything.
pub fn mark_range(plan: &Plan) -> Function {
    let (ptr, len, first, last) = (0, 1, 2, 3);
    let mut f = Function::new([(2, ValType::I64)]);
    f.instruction(&I::LocalGet(len))
        .instruction(&I::I32Eqz)
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::Return)
        .instruction(&I::End)
        .instruction(&I::LocalGet(ptr))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::I64Const(plan.shift as i64))
        .instruction(&I::I64ShrU)
        .instruction(&I::LocalSet(first))
        .instruction(&I::LocalGet(ptr))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::LocalGet(len))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::I64Add)
        .instruction(&I::I64Const(1))
        .instruction(&I::I64Sub)
        .instruction(&I::I64Const(plan.shift as i64))
        .instruction(&I::I64ShrU)
        .instruction(&I::LocalTee(last))
        .instruction(&I::I64Const(63))
        .instruction(&I::I64GtU)
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::I64Const(-1))
        .instruction(&I::GlobalSet(plan.dirty))
        .instruction(&I::Return)
        .instruction(&I::End)
        // dirty |= (-1 << first) & (-1 >> (63 - last))
        .instruction(&I::GlobalGet(plan.dirty))
        .instruction(&I::I64Const(-1))
        .instruction(&I::LocalGet(first))
        .instruction(&I::I64Shl)
        .instruction(&I::I64Const(-1))
        .instruction(&I::I64Const(63))
        .instruction(&I::LocalGet(last))
        .instruction(&I::I64Sub)
        .instruction(&I::I64ShrU)
        .instruction(&I::I64And)
        .instruction(&I::I64Or)
        .instruction(&I::GlobalSet(plan.dirty))
        .instruction(&I::End);
    f
}

/// Locals [`restore`] uses, from the index it is given: three `i64`, then
/// two `i32`.
pub const RESTORE_LOCALS: [(u32, ValType); 2] = [(3, ValType::I64), (2, ValType::I32)];

/// Appends the copy of every dirty run of granules (plus [`SPILL`] bytes)
/// from memory 1 into memory 0, or of the whole memory when every bit is
/// set, then clears the mask. `locals` is where [`RESTORE_LOCALS`] start.
pub fn restore(f: &mut Function, plan: &Plan, locals: u32) {
    let (dirty, i, len, start, end) = (locals, locals + 1, locals + 2, locals + 3, locals + 4);
    let copy = I::MemoryCopy {
        dst_mem: 0,
        src_mem: 1,
    };
    f.instruction(&I::GlobalGet(plan.dirty))
        .instruction(&I::LocalTee(dirty))
        .instruction(&I::I64Const(-1))
        .instruction(&I::I64Eq)
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::I32Const(0))
        .instruction(&I::I32Const(0))
        .instruction(&I::I32Const(plan.total as i32))
        .instruction(&copy)
        .instruction(&I::Else)
        .instruction(&I::Block(wasm_encoder::BlockType::Empty))
        .instruction(&I::Loop(wasm_encoder::BlockType::Empty))
        .instruction(&I::LocalGet(dirty))
        .instruction(&I::I64Eqz)
        .instruction(&I::BrIf(1))
        // i = the lowest dirty granule; len = how many follow it dirty.
        .instruction(&I::LocalGet(dirty))
        .instruction(&I::I64Ctz)
        .instruction(&I::LocalSet(i))
        .instruction(&I::LocalGet(dirty))
        .instruction(&I::LocalGet(i))
        .instruction(&I::I64ShrU)
        .instruction(&I::I64Const(-1))
        .instruction(&I::I64Xor)
        .instruction(&I::I64Ctz)
        .instruction(&I::LocalSet(len))
        .instruction(&I::LocalGet(i))
        .instruction(&I::I32WrapI64)
        .instruction(&I::I32Const(plan.shift as i32))
        .instruction(&I::I32Shl)
        .instruction(&I::LocalSet(start))
        // end = min(((i + len) << shift) + SPILL, total)
        .instruction(&I::LocalGet(i))
        .instruction(&I::LocalGet(len))
        .instruction(&I::I64Add)
        .instruction(&I::I32WrapI64)
        .instruction(&I::I32Const(plan.shift as i32))
        .instruction(&I::I32Shl)
        .instruction(&I::I32Const(SPILL as i32))
        .instruction(&I::I32Add)
        .instruction(&I::LocalTee(end))
        .instruction(&I::I32Const(plan.total as i32))
        .instruction(&I::I32GtU)
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::I32Const(plan.total as i32))
        .instruction(&I::LocalSet(end))
        .instruction(&I::End)
        .instruction(&I::LocalGet(start))
        .instruction(&I::LocalGet(start))
        .instruction(&I::LocalGet(end))
        .instruction(&I::LocalGet(start))
        .instruction(&I::I32Sub)
        .instruction(&copy)
        // dirty &= !(((1 << len) - 1) << i): len < 64, as not every bit
        // is set.
        .instruction(&I::LocalGet(dirty))
        .instruction(&I::I64Const(1))
        .instruction(&I::LocalGet(len))
        .instruction(&I::I64Shl)
        .instruction(&I::I64Const(1))
        .instruction(&I::I64Sub)
        .instruction(&I::LocalGet(i))
        .instruction(&I::I64Shl)
        .instruction(&I::I64Const(-1))
        .instruction(&I::I64Xor)
        .instruction(&I::I64And)
        .instruction(&I::LocalSet(dirty))
        .instruction(&I::Br(0))
        .instruction(&I::End)
        .instruction(&I::End)
        .instruction(&I::End)
        .instruction(&I::I64Const(0))
        .instruction(&I::GlobalSet(plan.dirty));
}

/// The size of `ty` in linear memory under the canonical ABI, with its
/// alignment; `None` for a type this does not know.
pub fn abi_size(
    types: wasmparser::types::TypesRef,
    ty: &wasmparser::component_types::ComponentValType,
) -> Option<(u32, u32)> {
    use wasmparser::component_types::{ComponentDefinedType as D, ComponentValType as V};
    use wasmparser::PrimitiveValType as P;
    let primitive = |p: &P| match p {
        P::Bool | P::S8 | P::U8 => (1, 1),
        P::S16 | P::U16 => (2, 2),
        P::S32 | P::U32 | P::F32 | P::Char | P::ErrorContext => (4, 4),
        P::S64 | P::U64 | P::F64 => (8, 8),
        P::String => (8, 4),
    };
    let align_to = |n: u32, a: u32| n.div_ceil(a) * a;
    let fields = |tys: &mut dyn Iterator<Item = &V>| -> Option<(u32, u32)> {
        let (mut size, mut align) = (0, 1);
        for t in tys {
            let (s, a) = abi_size(types, t)?;
            size = align_to(size, a) + s;
            align = align.max(a);
        }
        Some((align_to(size, align), align))
    };
    let variant = |cases: &mut dyn Iterator<Item = Option<&V>>, count: usize| {
        let discriminant = match count {
            0..=256 => 1,
            257..=65536 => 2,
            _ => 4,
        };
        let (mut payload, mut align) = (0, discriminant);
        for t in cases.flatten() {
            let (s, a) = abi_size(types, t)?;
            payload = payload.max(s);
            align = align.max(a);
        }
        Some((
            align_to(align_to(discriminant, align) + payload, align),
            align,
        ))
    };
    match ty {
        V::Primitive(p) => Some(primitive(p)),
        V::Type(id) => match &types[*id] {
            D::Primitive(p) => Some(primitive(p)),
            D::Record(r) => fields(&mut r.fields.values()),
            D::Tuple(t) => fields(&mut t.types.iter()),
            D::Variant(v) => variant(&mut v.cases.values().map(|c| c.ty.as_ref()), v.cases.len()),
            D::Option { ty, .. } => variant(&mut [None, Some(ty)].into_iter(), 2),
            D::Result { ok, err, .. } => variant(&mut [ok.as_ref(), err.as_ref()].into_iter(), 2),
            D::Enum(names) => variant(&mut std::iter::empty(), names.len()),
            D::Flags(names) => Some(match names.len() {
                0..=8 => (1, 1),
                9..=16 => (2, 2),
                n => (4 * (n as u32).div_ceil(32), 4),
            }),
            D::List { .. } | D::Map { .. } => Some((8, 4)),
            D::FixedLengthList {
                element, length, ..
            } => {
                let (s, a) = abi_size(types, element)?;
                Some((s.checked_mul(*length)?, a))
            }
            D::Own(_) | D::Borrow(_) | D::Future { .. } | D::Stream { .. } => Some((4, 4)),
        },
    }
}
