fn main() {
    eprintln!("the whole-system benchmark harness is not yet implemented (issue 6)");
    std::process::exit(1);
}
