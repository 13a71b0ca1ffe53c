'use strict';
/**
 * A small Node.js client for LMaaS, built on @grpc/grpc-js and @grpc/proto-loader straight from the
 * repository's protos/ (no generated code).
 *
 *   const { InferenceClient } = require('./lmaas');
 *   const client = new InferenceClient('127.0.0.1:8001');
 *   const result = await client.infer('mlp', [
 *     { name: 'x', shape: [1, 4], data: new Float32Array([0.1, 0.2, 0.3, 0.4]) },
 *   ]);
 *   result.outputs.y.data;   // Float32Array
 *   client.close();
 *
 * Tensors travel as raw contents (row-major little-endian; BYTES elements as a 4-byte little-endian
 * length followed by the bytes). Data types map to JavaScript as:
 *
 *   BOOL               boolean[]           (input: also Uint8Array)
 *   INT8..INT32        Int8Array..Int32Array
 *   UINT8..UINT32      Uint8Array..Uint32Array
 *   INT64 / UINT64     BigInt64Array / BigUint64Array   (input: also arrays of numbers or bigints)
 *   FP32 / FP64        Float32Array / Float64Array
 *   FP16 / BF16        Float32Array (converted; input: numbers, rounded to nearest even)
 *   BYTES              Buffer[]            (input: strings (UTF-8), Buffers or Uint8Arrays)
 *
 * Failed calls reject with an LMaaSError whose `status` is the gRPC status name ('NOT_FOUND',
 * 'INVALID_ARGUMENT', ...) and `code` its number. UNAVAILABLE is retried by gRPC itself (retry policy in
 * the service config: 5 attempts, exponential backoff); every call has a deadline (default 30 s).
 */

const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** The protos/ directory of this repository (override with the LMAAS_PROTOS_DIR variable). */
const PROTOS_DIR = process.env.LMAAS_PROTOS_DIR || path.resolve(__dirname, '..', '..', 'protos');

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** A failed call: `status` is the gRPC status name, `code` its number, `details` the server's message. */
class LMaaSError extends Error {
  constructor(code, details, cause) {
    const status = STATUS_NAMES[code] || 'UNKNOWN';
    super(`${status}: ${details}`, cause ? { cause } : undefined);
    this.name = 'LMaaSError';
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

const packages = new Map();

/** Load `files` (relative to protosDir) and return the grpc package object (cached). */
function loadPackage(files, protosDir = PROTOS_DIR) {
  const key = `${protosDir}\0${files.join('\0')}`;
  if (!packages.has(key)) {
    const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protosDir] });
    packages.set(key, grpc.loadPackageDefinition(definition));
  }
  return packages.get(key);
}

function retryServiceConfig(services) {
  return JSON.stringify({
    methodConfig: [{
      name: services.map((service) => ({ service })),
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.1s',
        maxBackoff: '2s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    }],
  });
}

function channelOptions(services, options) {
  const maxBytes = options.maxMessageBytes || 64 * 1024 * 1024;
  return {
    'grpc.max_send_message_length': maxBytes,
    'grpc.max_receive_message_length': maxBytes,
    'grpc.service_config': retryServiceConfig(services),
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 2000,
    ...(options.channelOptions || {}),
  };
}

/** Shared by the clients: promisified unary calls with a deadline and error mapping. */
class BaseClient {
  constructor(ServiceClient, services, address, options = {}) {
    this.deadlineMs = options.deadlineMs ?? 30000;
    const bearer = options.token ?? options.apiKey; // control-plane token or worker API key, same header
    this.metadata = { ...(bearer ? { authorization: `Bearer ${bearer}` } : {}), ...options.metadata };
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.stub = new ServiceClient(address, credentials, channelOptions(services, options));
  }

  call(method, request, options = {}) {
    const deadlineMs = options.deadlineMs ?? this.deadlineMs;
    const callOptions = deadlineMs ? { deadline: new Date(Date.now() + deadlineMs) } : {};
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries({ ...this.metadata, ...options.metadata })) metadata.add(key, value);
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, callOptions, (err, response) => {
        if (err) reject(new LMaaSError(err.code, err.details || err.message, err));
        else resolve(response);
      });
    });
  }

  /** Close the channel. */
  close() {
    this.stub.close();
  }
}

// ---- tensors --------------------------------------------------------------------------------------------------

const ARRAY_TYPES = {
  INT8: Int8Array, INT16: Int16Array, INT32: Int32Array, INT64: BigInt64Array,
  UINT8: Uint8Array, UINT16: Uint16Array, UINT32: Uint32Array, UINT64: BigUint64Array,
  FP32: Float32Array, FP64: Float64Array,
};
const DATATYPE_OF = new Map([
  [Int8Array, 'INT8'], [Int16Array, 'INT16'], [Int32Array, 'INT32'], [BigInt64Array, 'INT64'],
  [Uint8Array, 'UINT8'], [Uint16Array, 'UINT16'], [Uint32Array, 'UINT32'], [BigUint64Array, 'UINT64'],
  [Float32Array, 'FP32'], [Float64Array, 'FP64'],
]);
/** Every datatype of the Open Inference Protocol. */
const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
  'FP16', 'FP32', 'FP64', 'BF16', 'BYTES'];

function requireLittleEndian() {
  if (os.endianness() !== 'LE') throw new Error('lmaas.js converts raw tensors on little-endian hosts only');
}

const scratch = new DataView(new ArrayBuffer(4));

/** float → IEEE half bits, rounding to nearest even. */
function toFloat16Bits(value) {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const middle = 1 << (shift - 1);
    if (rest > middle || (rest === middle && (half & 1))) half += 1;
    return sign | half;
  }
  let half = sign | (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (half & 1))) half += 1; // a carry rounds up into the exponent
  return half;
}

function fromFloat16Bits(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** float → bfloat16 bits, rounding to nearest even. */
function toBfloat16Bits(value) {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff)) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

function fromBfloat16Bits(h) {
  scratch.setUint32(0, h << 16);
  return scratch.getFloat32(0);
}

function elementCount(shape) {
  return shape.reduce((n, d) => n * Number(d), 1);
}

function bytesOf(typed) {
  return Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);
}

/** The datatype of `data` when none is given: from its TypedArray class. */
function datatypeOf(data) {
  const datatype = DATATYPE_OF.get(data && data.constructor);
  if (!datatype) throw new TypeError('give a datatype for data that is not a typed array');
  return datatype;
}

/** Raw contents (a Buffer) of `data` as `datatype`. */
function encodeTensor(datatype, data) {
  requireLittleEndian();
  if (datatype === 'BYTES') {
    const parts = [];
    for (const item of data) {
      const bytes = typeof item === 'string' ? Buffer.from(item, 'utf8') : Buffer.from(item);
      const length = Buffer.alloc(4);
      length.writeUInt32LE(bytes.length);
      parts.push(length, bytes);
    }
    return Buffer.concat(parts);
  }
  if (datatype === 'BOOL') return Buffer.from(Array.from(data, (v) => (v ? 1 : 0)));
  if (datatype === 'FP16' || datatype === 'BF16') {
    const convert = datatype === 'FP16' ? toFloat16Bits : toBfloat16Bits;
    return bytesOf(Uint16Array.from(data, (v) => convert(Number(v))));
  }
  const ArrayType = ARRAY_TYPES[datatype];
  if (!ArrayType) throw new TypeError(`unknown datatype ${datatype}`);
  if (data instanceof ArrayType) return Buffer.from(bytesOf(data)); // a copy: the caller may reuse its array
  const isBig = ArrayType === BigInt64Array || ArrayType === BigUint64Array;
  return bytesOf(ArrayType.from(data, isBig ? (v) => BigInt(v) : Number));
}

/** Typed data of raw contents `raw` (a Buffer) with `datatype` and `shape`. */
function decodeTensor(datatype, shape, raw) {
  requireLittleEndian();
  const count = elementCount(shape);
  if (datatype === 'BYTES') {
    const out = [];
    let pos = 0;
    for (let i = 0; i < count; i += 1) {
      if (pos + 4 > raw.length) throw new Error(`BYTES contents end after ${i} of ${count} elements`);
      const length = raw.readUInt32LE(pos);
      pos += 4;
      if (pos + length > raw.length) throw new Error(`BYTES element ${i} overruns the contents`);
      out.push(Buffer.from(raw.subarray(pos, pos + length)));
      pos += length;
    }
    if (pos !== raw.length) throw new Error(`${raw.length - pos} bytes left after ${count} BYTES elements`);
    return out;
  }
  if (datatype === 'BOOL') return Array.from(raw.subarray(0, count), (b) => b !== 0);
  if (datatype === 'FP16' || datatype === 'BF16') {
    const bits = new Uint16Array(count);
    Buffer.from(bits.buffer).set(raw.subarray(0, 2 * count));
    return Float32Array.from(bits, datatype === 'FP16' ? fromFloat16Bits : fromBfloat16Bits);
  }
  const ArrayType = ARRAY_TYPES[datatype];
  if (!ArrayType) throw new TypeError(`unknown datatype ${datatype}`);
  if (raw.length !== count * ArrayType.BYTES_PER_ELEMENT) {
    throw new Error(`${raw.length} bytes do not hold [${shape}] of ${datatype}`);
  }
  const out = new ArrayType(count); // aligned copy: gRPC buffers need not be aligned
  Buffer.from(out.buffer).set(raw);
  return out;
}

function toTensorList(inputs) {
  if (Array.isArray(inputs)) return inputs;
  return Object.entries(inputs).map(([name, tensor]) => ({ name, ...tensor }));
}

// ---- clients --------------------------------------------------------------------------------------------------

const INFERENCE_SERVICE = 'inference.GRPCInferenceService';

/**
 * Client of an inference endpoint (an LMaaS worker or any Open Inference Protocol v2 server).
 * options: { credentials (default insecure; TLS: grpc.credentials.createSsl(rootPem, keyPem, certPem)),
 *   apiKey (sent as `authorization: Bearer KEY`), metadata ({ header: value } on every call),
 *   deadlineMs (default 30000; 0 = none), maxMessageBytes, channelOptions, protosDir }
 */
class InferenceClient extends BaseClient {
  constructor(address = '127.0.0.1:8001', options = {}) {
    const pkg = loadPackage(['inference/grpc_service.proto'], options.protosDir);
    super(pkg.inference.GRPCInferenceService, [INFERENCE_SERVICE], address, options);
  }

  async serverLive(options) {
    return (await this.call('ServerLive', {}, options)).live;
  }

  async serverReady(options) {
    return (await this.call('ServerReady', {}, options)).ready;
  }

  async modelReady(name, version = '', options) {
    return (await this.call('ModelReady', { name, version: String(version) }, options)).ready;
  }

  /** { name, version, extensions } */
  serverMetadata(options) {
    return this.call('ServerMetadata', {}, options);
  }

  /** { name, versions, platform, inputs: [{ name, datatype, shape }], outputs } (shapes as numbers) */
  async modelMetadata(name, version = '', options) {
    const meta = await this.call('ModelMetadata', { name, version: String(version) }, options);
    const tensors = (list) => list.map((t) => ({ ...t, shape: t.shape.map(Number) }));
    return { ...meta, inputs: tensors(meta.inputs), outputs: tensors(meta.outputs) };
  }

  /** The models of the worker's repository: [{ name, version, state, reason }] (RepositoryIndex). */
  async listModels({ ready = false, ...options } = {}) {
    return (await this.call('RepositoryIndex', { ready }, options)).models;
  }

  /**
   * Run `model` on `inputs`: an array of { name, shape, data, datatype? } or an object name → { shape, data,
   * datatype? }; datatype defaults from the TypedArray class of data.
   * options: { version, outputs: [names], id, deadlineMs, metadata }.
   * Resolves { modelName, modelVersion, id, outputs: { name: { datatype, shape, data } } }.
   */
  async infer(model, inputs, options = {}) {
    const request = {
      model_name: model,
      model_version: String(options.version ?? ''),
      id: options.id || '',
      inputs: [],
      outputs: (options.outputs || []).map((name) => ({ name })),
      raw_input_contents: [],
    };
    for (const tensor of toTensorList(inputs)) {
      const datatype = tensor.datatype || datatypeOf(tensor.data);
      const shape = tensor.shape.map(Number);
      const count = elementCount(shape);
      if (tensor.data.length !== count) {
        throw new RangeError(`input '${tensor.name}': ${tensor.data.length} elements do not fill shape [${shape}]`);
      }
      request.inputs.push({ name: tensor.name, datatype, shape });
      request.raw_input_contents.push(encodeTensor(datatype, tensor.data));
    }
    const response = await this.call('ModelInfer', request, options);
    const outputs = {};
    response.outputs.forEach((tensor, i) => {
      const shape = tensor.shape.map(Number);
      const raw = response.raw_output_contents[i];
      if (raw === undefined) throw new Error(`output '${tensor.name}' came without raw contents`);
      outputs[tensor.name] = { datatype: tensor.datatype, shape, data: decodeTensor(tensor.datatype, shape, raw) };
    });
    return { modelName: response.model_name, modelVersion: response.model_version, id: response.id, outputs };
  }
}

const REGISTRY_SERVICE = 'lmaas.control.v1.ModelRegistry';

/**
 * Client of the LMaaS control plane's ModelRegistry (lmaas.control.v1). `registry` is the raw stub for the
 * calls this small client does not wrap (callback style, as @grpc/grpc-js generates it).
 */
class ControlPlaneClient extends BaseClient {
  /** `options.token` (default: the LMAAS_TOKEN variable) is sent as `authorization: Bearer TOKEN`. */
  constructor(address = '127.0.0.1:8090', options = {}) {
    const pkg = loadPackage(['lmaas/control/v1/registry.proto'], options.protosDir);
    options = { token: process.env.LMAAS_TOKEN, ...options };
    super(pkg.lmaas.control.v1.ModelRegistry, [REGISTRY_SERVICE], address, options);
    this.registry = this.stub;
  }

  /** Every registered model, sorted by name: [{ name, description, metadata, latest_version, ... }]. */
  async listModels(options) {
    return (await this.call('ListModels', {}, options)).models;
  }

  /** Every version of `model`, oldest first: [{ model, version, digest, format, ... }]. */
  async listVersions(model, options) {
    return (await this.call('ListVersions', { model }, options)).versions;
  }
}

module.exports = {
  ControlPlaneClient,
  DATATYPES,
  InferenceClient,
  LMaaSError,
  PROTOS_DIR,
  decodeTensor,
  encodeTensor,
  fromBfloat16Bits,
  fromFloat16Bits,
  loadPackage,
  toBfloat16Bits,
  toFloat16Bits,
};
