fn main() {
    println!("cargo:rerun-if-changed=proto/nexus.proto");
    if let Err(e) = prost_build::compile_protos(&["proto/nexus.proto"], &["proto/"]) {
        panic!(
            "compiling proto/nexus.proto failed: {e}\n\
             prost-build needs protoc: install it with `sudo apt-get install protobuf-compiler` \
             (or run `make deps`)"
        );
    }
}
