"""The OpenAI API's shapes, as bytes and dicts: no I/O, no engines.

- ``schemas``: the request bodies the front door and the Python API accept
  (validation, OpenAPI);
- ``sse``: splitting a Server-Sent Events byte stream into JSON payloads;
- ``chunks``: counting tokens in streamed chunks and reshaping them for the client;
- ``aggregate``: folding a stream of chunks into one non-streaming reply;
- ``prompts``: a request's prompts, and a token estimate.
"""
