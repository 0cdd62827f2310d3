//! `clipped(max:)`: send each f32 clipped to ±max, densely; workers' payloads add up.
use regimen_plugin::{export::*, *};
const ID: MethodId = MethodId(0x8A01); // plugin method ids are 0x8000 and up
struct Clipped(f32);

impl Compressor for Clipped {
    fn name(&self) -> &str {
        "clipped"
    }
    fn method_id(&self) -> MethodId {
        ID
    }
    fn aggregation(&self) -> Aggregation {
        Aggregation::Sum(WireElement::F32)
    }
    fn compress(&mut self, input: TensorView<'_>, _: &StepContext<'_>, out: &mut Vec<u8>) -> Result<(), CompressError> {
        PayloadHeader::new(ID, input.shape)?.write(out);
        out.extend(input.data.iter().flat_map(|x| x.clamp(-self.0, self.0).to_le_bytes()));
        Ok(())
    }
    fn decompress_add(&mut self, payload: &[u8], scale: f32, out: &mut [f32]) -> Result<(), CompressError> {
        let (_, mut data) = PayloadHeader::parse(payload, ID, out.len())?;
        let values = data.bytes(4 * out.len())?.chunks_exact(4);
        for (o, x) in out.iter_mut().zip(values) {
            *o += scale * f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        }
        Ok(())
    }
}

fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    match args.number("max", Some(1.0))? {
        max if max > 0.0 => Ok(Box::new(Clipped(max as f32))),
        _ => Err(ArgError::new("max", "must be above 0")),
    }
}
const PARAMS: &[Param] = &[Param::number("max", "clip bound").default("1")];
const CLIPPED: CompressorExport = CompressorExport { name: "clipped", description: "clipped f32", params: PARAMS, thread_safe: true, build };
const PLUGIN: PluginDef = PluginDef { name: "clipped", version: "0.1.0", compressors: &[CLIPPED], controllers: &[] };
regimen_plugin::export_plugin!(PLUGIN);
