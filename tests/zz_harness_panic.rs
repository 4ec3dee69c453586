mod common;
#[tokio::test]
#[should_panic(expected = "boom")]
async fn panics_and_cleans_up() {
    let hfs = common::Hfs::start().await;
    std::fs::write("/tmp/zz_hfs_info", format!("{} {}", hfs.port, hfs.dir().display())).unwrap();
    panic!("boom");
}
#[tokio::test]
#[should_panic(expected = "Run scripts/setup-test-env.sh")]
async fn missing_binary() {
    unsafe { std::env::set_var("HFS_BIN", "/nonexistent/hfs"); }
    let _ = common::Hfs::start().await;
}
