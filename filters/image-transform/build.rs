// Image decoders keep large buffers on the stack while decoding: this
// filter gets a 1 MiB stack instead of the 16 KiB the other guests use
// (the later `-z stack-size` wins at link time).
fn main() {
    println!("cargo:rustc-link-arg-cdylib=-zstack-size=1048576");
}
