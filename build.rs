//! Sets `cfg(pika)` when `PIKA_BIN` names a Pika binary, so that the tests that need a
//! real Pika run; without it they are reported as ignored, by name.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pika)");
    println!("cargo::rerun-if-env-changed=PIKA_BIN");
    if std::env::var_os("PIKA_BIN").is_some_and(|bin| !bin.is_empty()) {
        println!("cargo::rustc-cfg=pika");
    }
}
