// Calls coopnets.v1.CoopNets/Synthesize from Node with @grpc/grpc-js, straight from the .proto.
//   node synth.js HOST:PORT COUNT SEED [TOKEN]
// Prints one JSON line: {"seeds": [...], "energy": [...], "shapes": [[C, H, W], ...], "first_pixels": [...]}.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, count, seed, token] = process.argv.slice(2);
const protoRoot = path.resolve(__dirname, "..", "..", "..", "protos");
const definition = protoLoader.loadSync("coopnets/v1/coopnets.proto", {
  includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true,
});
const coopnets = grpc.loadPackageDefinition(definition).coopnets.v1;
const client = new coopnets.CoopNets(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (token) metadata.add("authorization", `Bearer ${token}`);

const request = {count: Number(count), seed: Number(seed), format: "IMAGE_FORMAT_TENSOR"};
client.Synthesize(request, metadata, {deadline: Date.now() + 60000}, (err, response) => {
  if (err) {
    console.error(`Synthesize failed: ${err.code} ${err.details}`);
    process.exit(1);
  }
  const images = response.images;
  const first = images[0].image.tensor;
  const floats = new Float32Array(first.data.buffer, first.data.byteOffset, first.data.length / 4);
  console.log(JSON.stringify({
    seeds: images.map((g) => g.seed),
    energy: images.map((g) => g.energy),
    shapes: images.map((g) => g.image.tensor.shape),
    first_pixels: Array.from(floats.slice(0, 8)),
  }));
  client.close();
});
