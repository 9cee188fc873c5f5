fn main() {
    let protos = ["proto/nexus.proto", "proto/log.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Err(e) = prost_build::compile_protos(&protos, &["proto/"]) {
        panic!(
            "compiling proto/*.proto failed: {e}\n\
             prost-build needs protoc: install it with `sudo apt-get install protobuf-compiler` \
             (or run `make deps`)"
        );
    }
}
