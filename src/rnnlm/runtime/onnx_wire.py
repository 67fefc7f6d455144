"""Is any tensor of an ONNX graph stored outside its bytes? Read from the protobuf wire format.

A TensorProto may hold its values in another file ("external data": a `location` relative to the
model's folder, or, for a model given as bytes, to the working directory). A doctored model.onnx
could so make onnxruntime read any file the process can. `rnnlm export` never writes external
data, so the runtime refuses every graph that has some, before onnxruntime sees it. onnx is not a
runtime dependency; this walks the wire format itself, entering only the messages that can hold a
tensor (field numbers from onnx.proto): initializers, sparse initializers, node attributes
(Constant values, tensors), subgraphs (If, Loop, Scan), functions and training graphs.
"""

# message -> {field number: the message type of that field}; every other field is skipped
MESSAGES = {
    "Model": {7: "Graph", 20: "TrainingInfo", 25: "Function"},
    "TrainingInfo": {1: "Graph", 2: "Graph"},
    "Graph": {1: "Node", 5: "Tensor", 15: "SparseTensor"},
    "Function": {7: "Node", 11: "Attribute"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "SparseTensor", 23: "SparseTensor"},
    "SparseTensor": {1: "Tensor", 2: "Tensor"},
    "Tensor": {},
}
TENSOR_NAME, EXTERNAL_DATA, DATA_LOCATION, EXTERNAL = 8, 13, 14, 1  # TensorProto fields; DataLocation.EXTERNAL
MAX_DEPTH = 100  # messages inside messages: subgraphs nest, but not this deep
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types (3 and 4, groups, are not in ONNX)


def external_tensor(model: bytes) -> str | None:
    """The name of the first tensor stored as external data, or None when every tensor is inside.
    Raises ValueError for bytes that are not a protobuf message of ONNX's shape."""
    data = memoryview(model)
    todo = [("Model", 0, len(data), 0)]  # (message type, start, end, depth)
    while todo:
        kind, start, end, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
        external, name = False, ""
        for field, wire, value in _fields(data, start, end):
            if kind == "Tensor":
                if field == EXTERNAL_DATA or field == DATA_LOCATION and wire == VARINT and value == EXTERNAL:
                    external = True
                elif field == TENSOR_NAME and wire == LENGTH:
                    name = bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
            elif wire == LENGTH and field in MESSAGES[kind]:
                todo.append((MESSAGES[kind][field], *value, depth + 1))
        if external:
            return name
    return None


def _fields(data: memoryview, start: int, end: int):
    """(field number, wire type, value) of each field in data[start:end]: an int for a varint or a
    fixed-size field, (start, end) of its bytes for a length-delimited one."""
    i = start
    while i < end:
        key, i = _varint(data, i, end)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, i = _varint(data, i, end)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            value, i = int.from_bytes(data[i:i + size], "little"), i + size
        elif wire == LENGTH:
            size, i = _varint(data, i, end)
            value, i = (i, i + size), i + size
        else:
            raise ValueError(f"wire type {wire} at byte {i}")
        if i > end or field == 0:
            raise ValueError(f"a field runs past its message at byte {i}")
        yield field, wire, value


def _varint(data: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError(f"a truncated or overlong varint at byte {i}")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i
