//! Scratch: compile scripts given on the command line and print diagnostics.
fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let file = regimen_dsl::SourceFile::new(path.clone(), text);
        match regimen_dsl::compile(&file, &Default::default()) {
            Ok(c) => {
                println!(
                    "{path}: ok, {} nodes, outputs {:?}",
                    c.graph.nodes.len(),
                    c.graph.outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
                );
                for w in &c.warnings {
                    print!("{}", w.render(&file));
                }
                let t: Vec<String> = [0.0, 1.0, 10.0, 45.0, 99.0]
                    .iter()
                    .map(|s| format!("{:.6}", c.graph.eval_output(0, *s)))
                    .collect();
                println!("  lr: {}", t.join(" "));
            }
            Err(r) => print!("{r}"),
        }
    }
}
