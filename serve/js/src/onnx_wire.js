/**
 * Is any tensor of an ONNX graph stored outside its bytes? Read from the protobuf wire format, as
 * src/rnnlm/runtime/onnx_wire.py reads it.
 *
 * A TensorProto may hold its values in another file ("external data"); onnxruntime resolves such a
 * `location` against the working directory when it is given bytes, so a doctored model.onnx could
 * make it read any file the process can. `rnnlm export` never writes external data, so the runtime
 * refuses every graph that has some, before onnxruntime sees it. Only the messages that can hold a
 * tensor are entered (field numbers from onnx.proto).
 */

/** message -> {field number: the message type of that field}; every other field is skipped */
const MESSAGES = {
  Model: { 7: 'Graph', 20: 'TrainingInfo', 25: 'Function' },
  TrainingInfo: { 1: 'Graph', 2: 'Graph' },
  Graph: { 1: 'Node', 5: 'Tensor', 15: 'SparseTensor' },
  Function: { 7: 'Node', 11: 'Attribute' },
  Node: { 5: 'Attribute' },
  Attribute: { 5: 'Tensor', 6: 'Graph', 10: 'Tensor', 11: 'Graph', 22: 'SparseTensor', 23: 'SparseTensor' },
  SparseTensor: { 1: 'Tensor', 2: 'Tensor' },
  Tensor: {},
};
const TENSOR_NAME = 8; const EXTERNAL_DATA = 13; const DATA_LOCATION = 14; const EXTERNAL = 1;
const MAX_DEPTH = 100;
const VARINT = 0; const FIXED64 = 1; const LENGTH = 2; const FIXED32 = 5;

/**
 * The name of the first tensor stored as external data, or null when every tensor is inside.
 * Throws an Error for bytes that are not a protobuf message of ONNX's shape.
 * @param {Uint8Array} model
 * @returns {string | null}
 */
export function externalTensor(model) {
  const todo = [['Model', 0, model.length, 0]];
  while (todo.length) {
    const [kind, start, end, depth] = todo.pop();
    if (depth > MAX_DEPTH) throw new Error(`messages nested more than ${MAX_DEPTH} deep`);
    let external = false; let name = '';
    for (const [field, wire, value] of fields(model, start, end)) {
      if (kind === 'Tensor') {
        if (field === EXTERNAL_DATA || (field === DATA_LOCATION && wire === VARINT && value === EXTERNAL)) {
          external = true;
        } else if (field === TENSOR_NAME && wire === LENGTH) {
          name = new TextDecoder().decode(model.subarray(value[0], value[1]));
        }
      } else if (wire === LENGTH && MESSAGES[kind][field]) {
        todo.push([MESSAGES[kind][field], value[0], value[1], depth + 1]);
      }
    }
    if (external) return name;
  }
  return null;
}

/**
 * [field number, wire type, value] of each field in data[start, end): a number for a varint or a
 * fixed-size field (fixed ones are skipped, never read), [start, end] of its bytes for a length-delimited one.
 * @param {Uint8Array} data @param {number} start @param {number} end
 */
function* fields(data, start, end) {
  let i = start;
  while (i < end) {
    let key;
    [key, i] = varint(data, i, end);
    const field = Math.floor(key / 8); const wire = key % 8;
    let value = 0;
    if (wire === VARINT) {
      [value, i] = varint(data, i, end);
    } else if (wire === FIXED64 || wire === FIXED32) {
      i += wire === FIXED64 ? 8 : 4;
    } else if (wire === LENGTH) {
      let size;
      [size, i] = varint(data, i, end);
      value = [i, i + size];
      i += size;
    } else {
      throw new Error(`wire type ${wire} at byte ${i}`);
    }
    if (i > end || field === 0) throw new Error(`a field runs past its message at byte ${i}`);
    yield [field, wire, value];
  }
}

/**
 * A varint's value (exact up to 2^53, which every length and field number of a model file is below)
 * and the index after it. @param {Uint8Array} data @param {number} i @param {number} end
 */
function varint(data, i, end) {
  let value = 0; let scale = 1;
  for (let shift = 0; ; shift += 7) {
    if (i >= end || shift > 63) throw new Error(`a truncated or overlong varint at byte ${i}`);
    const byte = data[i];
    value += (byte & 0x7f) * scale;
    scale *= 128;
    i += 1;
    if (byte < 0x80) return [value, i];
  }
}
