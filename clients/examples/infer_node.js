#!/usr/bin/env node
'use strict';
/*
 * One inference request from Node.js with the LMaaS Node client (../node/lmaas.js), driven by JSON so that
 * another program can compare its answer bit for bit (train_serve.py uses it).
 *
 *   echo '{"address": "127.0.0.1:8001", "model": "mlp", "version": "",
 *          "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "raw": "<base64>"}]}' \
 *     | node clients/examples/infer_node.js
 *
 * stdin: { address, model, version?, apiKey?, deadlineMs?, inputs: [{ name, datatype, shape, raw }] }, where raw
 * is the tensor's raw contents (row-major little-endian) in base64.
 * stdout: { model_name, model_version, outputs: { NAME: { datatype, shape, raw } } }, raw in base64 likewise.
 * Needs `npm ci` in clients/node. Exit status 1 and a message on stderr when the call fails.
 */

const { InferenceClient, decodeTensor, encodeTensor } = require('../node/lmaas');

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function main() {
  const request = await readStdin();
  const options = { deadlineMs: Number(request.deadlineMs || 30000) };
  if (request.apiKey) options.apiKey = request.apiKey;
  const client = new InferenceClient(request.address, options);
  try {
    // Decode to typed arrays and let the client encode them again: the path any Node program takes.
    const inputs = request.inputs.map(({ name, datatype, shape, raw }) => ({
      name, datatype, shape, data: decodeTensor(datatype, shape, Buffer.from(raw, 'base64')),
    }));
    const result = await client.infer(request.model, inputs, { version: request.version || '' });
    const outputs = {};
    for (const [name, tensor] of Object.entries(result.outputs)) {
      const raw = encodeTensor(tensor.datatype, tensor.data).toString('base64');
      outputs[name] = { datatype: tensor.datatype, shape: tensor.shape, raw };
    }
    process.stdout.write(`${JSON.stringify({
      model_name: result.modelName, model_version: result.modelVersion, outputs,
    })}\n`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(err.status ? `error: ${err.status}: ${err.details}` : `error: ${err.message}`);
  process.exitCode = 1;
});
