//! Writes `tests/crafted/*.wasm`: components of the `quiesce-plugin` world
//! made from hand-written core modules, for `tests/tests/wasm_hostile.rs`.
//! `describe` answers a plugin-info at 256 (name, version and quiesces all
//! "crafted"; no grants, no params); `pre` runs the attack and answers the
//! all-zero hook-result at 512, `ok("")`; `post` answers the same.

use std::path::Path;

/// A growing loop: `$grow` is an expression yielding -1 when refused.
fn until_refused(grow: &str) -> String {
    format!("(block $done (loop $more (br_if $done (i32.eq {grow} (i32.const -1))) (br $more)))")
}

fn component(extra: &str, attack: &str) -> Vec<u8> {
    let module = format!(
        r#"(module
          (memory (export "memory") 1)
          {extra}
          (global $bump (mut i32) (i32.const 4096))
          (data (memory 0) (i32.const 16) "crafted")
          (data (memory 0) (i32.const 256) "\10\00\00\00\07\00\00\00\10\00\00\00\07\00\00\00\10\00\00\00\07\00\00\00")
          (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
            (local $p i32)
            ;; bump allocator: align up to `align` (param 2), take `new_size` (param 3)
            (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                                   (i32.sub (i32.const 0) (local.get 2))))
            (global.set $bump (i32.add (local.get $p) (local.get 3)))
            (local.get $p))
          (func (export "quiesce:plugin/hooks@0.1.0#describe") (result i32) (i32.const 256))
          (func (export "quiesce:plugin/hooks@0.1.0#pre") (param i32 i32 i32 i64 i32 i32) (result i32)
            {attack}
            (i32.const 512))
          (func (export "quiesce:plugin/hooks@0.1.0#post") (param i32 i32 i32 i64 i32 i32 i32 i32 i32) (result i32)
            (i32.const 512)))"#
    );
    let mut core = wat::parse_str(&module).expect("core module");
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve.push_str("plugin.wit", include_str!("../../../wit/v0.1.0/plugin.wit")).expect("wit");
    let world = resolve.select_world(&[pkg], Some("quiesce-plugin")).expect("world");
    wit_component::embed_component_metadata(&mut core, &resolve, world, wit_component::StringEncoding::UTF8).expect("embed");
    wit_component::ComponentEncoder::default().module(&core).expect("module").validate(true).encode().expect("component")
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = [
        // The control: no attack, answers like a plugin.
        ("plain", component("", "")),
        // Grows its table by 64 Ki elements (512 KiB) a step until refused.
        ("table-grow", component("(table $t 1 funcref)", &until_refused("(table.grow $t (ref.null func) (i32.const 65536))"))),
        // Two memories of 40 MiB each: each under a 64 MiB per-memory cap, together over it.
        ("two-memories", component("(memory $a 640) (memory $b 640)", "")),
        // Grows a second memory by 1 MiB a step until refused.
        ("second-memory-grow", component("(memory $a 1)", &until_refused("(memory.grow $a (i32.const 16))"))),
        // More memories than an instance may have.
        ("five-memories", component("(memory 1) (memory 1) (memory 1) (memory 1) (memory 1)", "")),
    ];
    for (name, bytes) in fixtures {
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
}
