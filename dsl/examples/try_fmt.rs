//! Scratch: format a script.
fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let file = regimen_dsl::SourceFile::new(path.clone(), text);
        match regimen_dsl::format(&file) {
            Ok(s) => print!("{s}"),
            Err(r) => print!("{r}"),
        }
    }
}
