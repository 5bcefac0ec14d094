//! What every end-to-end test needs: run the binary, read what it said.

use std::process::{Command, Output};

pub fn latentlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latentlens"))
        .args(args)
        .output()
        .expect("the binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
