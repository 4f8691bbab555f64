fn main() {
    // The window's files are built into the binary by `tauri::generate_context!`; without
    // this, a rebuilt ui/dist would leave a binary serving the old window.
    println!("cargo:rerun-if-changed=../ui/dist");
    tauri_build::build()
}
