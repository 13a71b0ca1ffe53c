#!/usr/bin/env node
'use strict';
/*
 * Command-line example of the LMaaS Node client. Prints JSON.
 *
 *   node examples/infer.js --address 127.0.0.1:8001 --model mlp --input 'x:FP32:1,4=0.1,0.2,0.3,0.4'
 *   node examples/infer.js --address 127.0.0.1:8001 --model fixed \
 *        --input 'a:FP32:2,2=1,2,3,4' --input 'b:FP32:2,2=10,20,30,40' --output sum
 *   node examples/infer.js --address 127.0.0.1:8001 --metadata mlp
 *   node examples/infer.js --address 127.0.0.1:8001 --list           # the worker's repository
 *   node examples/infer.js --control 127.0.0.1:8090 --list           # the control plane's models
 *
 * An input is NAME:DATATYPE:SHAPE=VALUES, SHAPE and VALUES comma-separated (BYTES values are UTF-8 strings).
 * Output tensors print as { datatype, shape, data }: 64-bit integers as strings, BYTES as UTF-8 strings.
 */

const { parseArgs } = require('node:util');
const { ControlPlaneClient, InferenceClient } = require('../lmaas');

const USAGE = `usage: infer.js [--address HOST:PORT] (--model NAME --input SPEC... [--output NAME...] [--version V]
                                      | --metadata NAME | --list)
       infer.js --control HOST:PORT --list`;

function parseInput(spec) {
  const match = /^([^:]+):([A-Z0-9]+):([0-9,]*)=(.*)$/s.exec(spec);
  if (!match) throw new Error(`bad --input ${JSON.stringify(spec)}: expected NAME:DATATYPE:SHAPE=VALUES`);
  const [, name, datatype, shapeText, valuesText] = match;
  const shape = shapeText ? shapeText.split(',').map(Number) : [];
  const values = valuesText === '' ? [] : valuesText.split(',');
  let data;
  if (datatype === 'BYTES') data = values;
  else if (datatype === 'BOOL') data = values.map((v) => v === 'true' || v === '1');
  else if (datatype === 'INT64' || datatype === 'UINT64') data = values.map((v) => BigInt(v));
  else data = values.map(Number);
  return { name, datatype, shape, data };
}

function printable(tensor) {
  const data = Array.from(tensor.data, (v) => {
    if (typeof v === 'bigint') return v.toString();
    if (Buffer.isBuffer(v)) return v.toString('utf8');
    return v;
  });
  return { datatype: tensor.datatype, shape: tensor.shape, data };
}

async function main(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string', default: process.env.LMAAS_ADDRESS || '127.0.0.1:8001' },
      control: { type: 'string' },
      model: { type: 'string' },
      version: { type: 'string', default: '' },
      input: { type: 'string', multiple: true, default: [] },
      output: { type: 'string', multiple: true, default: [] },
      metadata: { type: 'string' },
      list: { type: 'boolean', default: false },
      'deadline-ms': { type: 'string', default: '30000' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const options = { deadlineMs: Number(values['deadline-ms']) };
  if (values.control) {
    if (!values.list) throw new Error('--control goes with --list');
    const client = new ControlPlaneClient(values.control, options);
    try {
      console.log(JSON.stringify(await client.listModels(), null, 2));
    } finally {
      client.close();
    }
    return 0;
  }
  const client = new InferenceClient(values.address, options);
  try {
    if (values.list) {
      console.log(JSON.stringify(await client.listModels(), null, 2));
    } else if (values.metadata) {
      console.log(JSON.stringify(await client.modelMetadata(values.metadata, values.version), null, 2));
    } else if (values.model) {
      const inputs = values.input.map(parseInput);
      const result = await client.infer(values.model, inputs, { version: values.version, outputs: values.output });
      const outputs = Object.fromEntries(Object.entries(result.outputs).map(([k, t]) => [k, printable(t)]));
      console.log(JSON.stringify({ model_name: result.modelName, model_version: result.modelVersion, outputs }, null, 2));
    } else {
      console.error(USAGE);
      return 2;
    }
  } finally {
    client.close();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    console.error(err.status ? `error: ${err.status}: ${err.details}` : `error: ${err.message}`);
    process.exitCode = 1;
  },
);
