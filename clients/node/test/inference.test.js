'use strict';
// The Node client against a real LMaaS worker, spawned by the test (see test-support/servers.js).

const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { after, before, test } = require('node:test');
const { DATATYPES, InferenceClient, LMaaSError } = require('../lmaas');
const { startWorker } = require('../test-support/servers');

const X = [[0.1, 0.2, 0.3, 0.4], [-1, 0.5, 2, -0.25]];
let worker;
let client;

before(async () => {
  worker = await startWorker({ mlpInput: X });
  client = new InferenceClient(worker.grpc);
}, { timeout: 300000 });

after(async () => {
  if (client) client.close();
  if (worker) await worker.stop();
});

function assertClose(actual, expected, tolerance = 1e-5) {
  assert.equal(actual.length, expected.length);
  actual.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) <= tolerance * (1 + Math.abs(expected[i])),
    `element ${i}: ${v} != ${expected[i]}`));
}

test('health and metadata', async () => {
  assert.equal(await client.serverLive(), true);
  assert.equal(await client.serverReady(), true);
  assert.equal(await client.modelReady('mlp'), true);
  assert.equal(await client.modelReady('mlp', 2), true);
  assert.equal(await client.modelReady('nope'), false);
  const server = await client.serverMetadata();
  assert.equal(server.name, 'lmaas');
  assert.ok(server.extensions.includes('model_repository'));
  const meta = await client.modelMetadata('mlp');
  assert.deepEqual([...meta.versions].sort(), ['1', '2']);
  assert.deepEqual(meta.inputs, [{ name: 'x', datatype: 'FP32', shape: [-1, 4] }]);
  assert.deepEqual(meta.outputs, [{ name: 'y', datatype: 'FP32', shape: [-1, 3] }]);
});

test('lists the models of the worker', async () => {
  const models = await client.listModels();
  const ready = models.filter((m) => m.state === 'READY').map((m) => `${m.name}/${m.version}`);
  for (const name of ['mlp/1', 'mlp/2', 'identity/1', 'identity_bf16/1', 'fixed/1']) assert.ok(ready.includes(name), name);
  assert.ok((await client.listModels({ ready: true })).every((m) => m.state === 'READY'));
});

test('FP32 inference equals the model run in Python', async () => {
  const result = await client.infer('mlp', [{ name: 'x', shape: [2, 4], data: new Float32Array(X.flat()) }],
    { version: 1, id: 'node-1' });
  assert.equal(result.modelName, 'mlp');
  assert.equal(result.modelVersion, '1');
  assert.equal(result.id, 'node-1');
  const y = result.outputs.y;
  assert.equal(y.datatype, 'FP32');
  assert.deepEqual(y.shape, [2, 3]);
  assert.ok(y.data instanceof Float32Array);
  assertClose(Array.from(y.data), worker.mlpExpected.flat());
});

test('every datatype round-trips through the identity models', async () => {
  const samples = {
    BOOL: [true, false, true, false, false, true],
    UINT8: new Uint8Array([0, 1, 2, 3, 4, 255]),
    UINT16: new Uint16Array([0, 1, 2, 3, 4, 65535]),
    UINT32: new Uint32Array([0, 1, 2, 3, 4, 2 ** 32 - 1]),
    UINT64: new BigUint64Array([0n, 1n, 2n, 3n, 4n, 2n ** 64n - 1n]),
    INT8: new Int8Array([-128, 1, 2, 3, 4, 127]),
    INT16: new Int16Array([-32768, 1, 2, 3, 4, 32767]),
    INT32: new Int32Array([-(2 ** 31), 1, 2, 3, 4, 2 ** 31 - 1]),
    INT64: new BigInt64Array([-(2n ** 63n), 1n, 2n, 3n, 4n, 2n ** 63n - 1n]),
    FP16: [0, 0.5, -1.5, 3, 1024, -65504],
    FP32: new Float32Array([0, 1 / 3, -2, 1e30, -1e-30, 7]),
    FP64: new Float64Array([0, 1 / 3, -2, 1e300, -1e-300, 7]),
    BYTES: ['a', 'héllo wörld', '', Buffer.from([0, 1, 127]), 'x'.repeat(100), 'z'],
    BF16: [1.5, 2, 3, 4, 5, -6],
  };
  assert.deepEqual(Object.keys(samples).sort(), [...DATATYPES].sort());
  const inputs = {};
  for (const [dt, data] of Object.entries(samples)) {
    if (dt !== 'BF16') inputs[`in_${dt}`] = { datatype: dt, shape: [2, 3], data };
  }
  const result = await client.infer('identity', inputs);
  for (const [dt, data] of Object.entries(samples)) {
    if (dt === 'BF16') continue;
    const out = result.outputs[`out_${dt}`];
    assert.equal(out.datatype, dt);
    assert.deepEqual(out.shape, [2, 3]);
    if (dt === 'BYTES') {
      assert.deepEqual(out.data, data.map((v) => Buffer.from(v)));
    } else if (dt === 'BOOL' || dt === 'FP16') {
      assert.deepEqual(Array.from(out.data), data, dt);
    } else {
      assert.equal(out.data.constructor, data.constructor, dt);
      assert.deepEqual(out.data, data, dt);
    }
  }
  const bf16 = await client.infer('identity_bf16', { in_BF16: { datatype: 'BF16', shape: [2, 3], data: samples.BF16 } });
  assert.deepEqual(Array.from(bf16.outputs.out_BF16.data), samples.BF16);
});

test('INT64 and BYTES with selected outputs', async () => {
  const inputs = {};
  for (const [dt, ArrayType] of [['BOOL', Uint8Array], ['UINT8', Uint8Array], ['UINT16', Uint16Array],
    ['UINT32', Uint32Array], ['UINT64', BigUint64Array], ['INT8', Int8Array], ['INT16', Int16Array],
    ['INT32', Int32Array], ['INT64', BigInt64Array], ['FP16', Float32Array], ['FP32', Float32Array],
    ['FP64', Float64Array]]) {
    inputs[`in_${dt}`] = { datatype: dt, shape: [1, 3], data: new ArrayType(3) };
  }
  inputs.in_INT64.data = [1, -2, 2 ** 40]; // numbers become BigInt
  inputs.in_BYTES = { datatype: 'BYTES', shape: [1, 3], data: ['one', 'two', 'three'] };
  const result = await client.infer('identity', inputs, { outputs: ['out_INT64', 'out_BYTES'] });
  assert.deepEqual(Object.keys(result.outputs).sort(), ['out_BYTES', 'out_INT64']);
  assert.deepEqual(Array.from(result.outputs.out_INT64.data), [1n, -2n, 2n ** 40n]);
  assert.deepEqual(result.outputs.out_BYTES.data.map(String), ['one', 'two', 'three']);
});

test('errors carry the gRPC status', async () => {
  await assert.rejects(client.infer('nope', [{ name: 'x', shape: [1, 4], data: new Float32Array(4) }]),
    (err) => err instanceof LMaaSError && err.status === 'NOT_FOUND' && /nope/.test(err.details));
  await assert.rejects(client.infer('mlp', [{ name: 'x', shape: [1, 5], data: new Float32Array(5) }]),
    (err) => err instanceof LMaaSError && err.status === 'INVALID_ARGUMENT' && /'x'/.test(err.details));
  await assert.rejects(client.modelMetadata('nope'), (err) => err.status === 'NOT_FOUND');
  await assert.rejects(client.infer('mlp', [{ name: 'x', shape: [1, 4], data: new Float32Array(3) }]), RangeError);
});

test('the example CLI runs inference and lists models', async () => {
  const script = path.join(__dirname, '..', 'examples', 'infer.js');
  const run = (args) => new Promise((resolve, reject) => {
    execFile(process.execPath, [script, '--address', worker.grpc, ...args], (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout));
    });
  });
  const out = await run(['--model', 'mlp', '--version', '1', '--input', `x:FP32:2,4=${X.flat().join(',')}`]);
  assert.equal(out.model_version, '1');
  assert.deepEqual(out.outputs.y.shape, [2, 3]);
  assertClose(out.outputs.y.data, worker.mlpExpected.flat());
  const fixed = await run(['--model', 'fixed', '--input', 'a:FP32:2,2=1,2,3,4', '--input', 'b:FP32:2,2=10,20,30,40']);
  assert.deepEqual(fixed.outputs.sum.data, [11, 22, 33, 44]);
  const models = await run(['--list']);
  assert.ok(models.some((m) => m.name === 'mlp' && m.state === 'READY'));
  const meta = await run(['--metadata', 'fixed']);
  assert.deepEqual(meta.inputs.map((t) => t.name), ['a', 'b']);
  await assert.rejects(run(['--model', 'nope', '--input', 'x:FP32:1=1']), /NOT_FOUND/);
});

test('a server that is not there is UNAVAILABLE', async () => {
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = probe.address();
      probe.close(() => resolve(free));
    });
  });
  const absent = new InferenceClient(`127.0.0.1:${port}`, { deadlineMs: 10000 });
  try {
    const t0 = Date.now();
    await assert.rejects(absent.serverLive(), (err) => err instanceof LMaaSError && err.status === 'UNAVAILABLE');
    assert.ok(Date.now() - t0 < 9000, 'fails before the deadline');
  } finally {
    absent.close();
  }
});

test('an API key travels as authorization: Bearer', async () => {
  const secured = await startWorker({
    repository: worker.repository, args: ['--require-api-key'], env: { LMAAS_API_KEYS: 'node-key' },
  });
  const x = [{ name: 'x', shape: [1, 4], data: new Float32Array(4) }];
  const anonymous = new InferenceClient(secured.grpc);
  const keyed = new InferenceClient(secured.grpc, { apiKey: 'node-key' });
  try {
    await assert.rejects(anonymous.infer('mlp', x), (err) => err.status === 'UNAUTHENTICATED');
    assert.deepEqual((await keyed.infer('mlp', x)).outputs.y.shape, [1, 3]);
    assert.deepEqual((await anonymous.infer('mlp', x, { metadata: { 'x-api-key': 'node-key' } })).outputs.y.shape, [1, 3]);
  } finally {
    anonymous.close();
    keyed.close();
    await secured.stop();
  }
});
