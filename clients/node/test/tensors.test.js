'use strict';
// Raw tensor encoding and decoding, without a server.

const assert = require('node:assert/strict');
const { test } = require('node:test');
const {
  decodeTensor, encodeTensor, fromBfloat16Bits, fromFloat16Bits, toBfloat16Bits, toFloat16Bits,
} = require('../lmaas');

test('numeric tensors are little-endian row-major bytes', () => {
  assert.deepEqual(encodeTensor('FP32', new Float32Array([1, -2])), Buffer.from([0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]));
  assert.deepEqual(encodeTensor('INT64', [1, -1]), Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255]));
  assert.deepEqual(encodeTensor('INT64', new BigInt64Array([2n ** 62n])), Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x40]));
  assert.deepEqual(encodeTensor('UINT16', [258]), Buffer.from([2, 1]));
  assert.deepEqual(encodeTensor('BOOL', [true, false, 1]), Buffer.from([1, 0, 1]));
});

test('every numeric datatype round-trips, including unaligned buffers', () => {
  const cases = {
    INT8: [-128, 0, 127], INT16: [-32768, 1, 32767], INT32: [-(2 ** 31), 1, 2 ** 31 - 1],
    UINT8: [0, 1, 255], UINT16: [0, 1, 65535], UINT32: [0, 1, 2 ** 32 - 1],
    FP32: [0.5, -1.25, 3], FP64: [Math.PI, -1e300, 0],
  };
  for (const [datatype, values] of Object.entries(cases)) {
    const raw = encodeTensor(datatype, values);
    const unaligned = Buffer.concat([Buffer.from([9]), raw]).subarray(1);
    assert.deepEqual(Array.from(decodeTensor(datatype, [3], unaligned)), values, datatype);
  }
  const big = [-(2n ** 63n), 0n, 2n ** 63n - 1n];
  assert.deepEqual(Array.from(decodeTensor('INT64', [3], encodeTensor('INT64', big))), big);
  const ubig = [0n, 2n ** 64n - 1n];
  assert.deepEqual(Array.from(decodeTensor('UINT64', [2], encodeTensor('UINT64', ubig))), ubig);
});

test('BYTES elements carry a 4-byte little-endian length', () => {
  const raw = encodeTensor('BYTES', ['ab', Buffer.from([0, 255]), '', 'é']);
  assert.deepEqual(raw, Buffer.from([2, 0, 0, 0, 97, 98, 2, 0, 0, 0, 0, 255, 0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9]));
  const back = decodeTensor('BYTES', [2, 2], raw);
  assert.deepEqual(back.map((b) => b.toString('latin1')), ['ab', '\u0000\u00ff', '', '\u00c3\u00a9']);
  assert.throws(() => decodeTensor('BYTES', [5], raw), /end after 4 of 5/);
  assert.throws(() => decodeTensor('BYTES', [3], raw), /left after 3/);
});

test('FP16 conversion rounds to nearest even and keeps specials', () => {
  const cases = [[0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00],
    [1e9, 0x7c00], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002], [Infinity, 0x7c00],
    [-Infinity, 0xfc00], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [0.1, 0x2e66]];
  for (const [value, bits] of cases) assert.equal(toFloat16Bits(value), bits, `toFloat16(${value})`);
  assert.equal(toFloat16Bits(NaN) & 0x7c00, 0x7c00);
  assert.ok(Number.isNaN(fromFloat16Bits(0x7e00)));
  for (let bits = 0; bits < 0x7c00; bits += 1) assert.equal(toFloat16Bits(fromFloat16Bits(bits)), bits);
  assert.deepEqual(Array.from(decodeTensor('FP16', [3], encodeTensor('FP16', [1.5, -0.25, 1024]))), [1.5, -0.25, 1024]);
});

test('BF16 conversion rounds to nearest even', () => {
  assert.equal(toBfloat16Bits(1), 0x3f80);
  assert.equal(toBfloat16Bits(-2), 0xc000);
  assert.equal(toBfloat16Bits(1 + 2 ** -8), 0x3f80); // tie: even
  assert.equal(toBfloat16Bits(1 + 3 * 2 ** -8), 0x3f82); // tie: even (up)
  assert.equal(toBfloat16Bits(Infinity), 0x7f80);
  assert.ok(Number.isNaN(fromBfloat16Bits(toBfloat16Bits(NaN))));
  assert.equal(fromBfloat16Bits(0x4049), 3.140625);
  assert.deepEqual(Array.from(decodeTensor('BF16', [2], encodeTensor('BF16', [1.5, -6]))), [1.5, -6]);
});
