// The SQL migrations are embedded at build time: a new one must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
