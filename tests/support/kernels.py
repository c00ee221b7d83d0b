"""Driving a real kernel from a test."""


def run(client, code, timeout=30):
    """Execute ``code``; returns (stdout, display data, error) from the kernel's replies."""
    msg_id = client.execute(code)
    stdout, displays, error = "", [], None
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            stdout += content["text"]
        elif kind in ("display_data", "execute_result", "update_display_data"):
            displays.append(content["data"])
        elif kind == "error":
            error = content
        elif kind == "status" and content["execution_state"] == "idle":
            return stdout, displays, error
