"""A KServe v2 client as an outside team would write it: Python, grpcio, stubs generated from
proto/inference/grpc_service.proto (the caller passes the folder they were generated into).

usage: kserve_client.py STUBS_DIR HOST:PORT MODEL TEXT...
Prints one JSON object: the server's metadata, the model's metadata, and the outputs of one
ModelInfer with typed contents and one with raw contents, each as {name: [datatype, shape, data]}.
"""
import json
import struct
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from inference import grpc_service_pb2 as pb  # noqa: E402
from inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402


def raw_bytes(items):
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def unraw_bytes(buf):
    out, at = [], 0
    while at < len(buf):
        (n,) = struct.unpack_from("<I", buf, at)
        out.append(buf[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def outputs(response):
    result = {}
    for i, t in enumerate(response.outputs):
        if response.raw_output_contents:
            raw = response.raw_output_contents[i]
            if t.datatype == "BYTES":
                data = [b.decode() for b in unraw_bytes(raw)]
            elif t.datatype == "FP64":
                data = list(struct.unpack("<%dd" % (len(raw) // 8), raw))
            elif t.datatype == "FP32":
                data = list(struct.unpack("<%df" % (len(raw) // 4), raw))
            else:
                data = raw.hex()
        elif t.datatype == "BYTES":
            data = [b.decode() for b in t.contents.bytes_contents]
        elif t.datatype == "FP64":
            data = list(t.contents.fp64_contents)
        else:
            data = list(t.contents.fp32_contents)
        result[t.name] = [t.datatype, list(t.shape), data]
    return result


def main():
    _, _, address, model, *texts = sys.argv
    items = [t.encode() for t in texts]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10)
        name = meta.inputs[0].name
        typed = pb.ModelInferRequest(model_name=model, id="typed-1")
        t = typed.inputs.add(name=name, datatype="BYTES", shape=[len(items)])
        t.contents.bytes_contents.extend(items)
        typed_response = stub.ModelInfer(typed, timeout=30)
        raw = pb.ModelInferRequest(model_name=model, id="raw-1")
        raw.inputs.add(name=name, datatype="BYTES", shape=[len(items)])
        raw.raw_input_contents.append(raw_bytes(items))
        raw_response = stub.ModelInfer(raw, timeout=30)
    print(json.dumps({
        "server": {"name": server.name, "version": server.version, "extensions": list(server.extensions)},
        "model": {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": [[i.name, i.datatype, list(i.shape)] for i in meta.inputs],
            "outputs": [[o.name, o.datatype, list(o.shape)] for o in meta.outputs],
        },
        "typed": {"id": typed_response.id, "version": typed_response.model_version, "raw": len(typed_response.raw_output_contents) > 0, "outputs": outputs(typed_response)},
        "raw": {"id": raw_response.id, "raw": len(raw_response.raw_output_contents) > 0, "outputs": outputs(raw_response)},
    }))


if __name__ == "__main__":
    main()
