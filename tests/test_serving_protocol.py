"""The OpenAI requests parsed in one place (serving/protocol.py), without a server: typed values out,
APIError naming the parameter in. The same cases over HTTP are in test_serving_api.py."""

import pytest

from jupyter_tt.serving.protocol import APIError, ChatMessage, ChatRequest, CompletionRequest


def test_a_chat_request_becomes_typed_messages_and_sampling_parameters():
    request = ChatRequest.parse({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stop": "\n",
                                 "stream": True, "stream_options": {"include_usage": True}}, model_name="m")
    assert request.messages == [ChatMessage(role="user", content="hi")] and request.stream and request.include_usage
    params = request.sampling_params(default_max_tokens=7)
    assert (params.max_tokens, params.temperature, params.stop) == (7, 0.0, ["\n"])


@pytest.mark.parametrize("parse, body, status, param", [
    (CompletionRequest.parse, {"prompt": ""}, 400, "prompt"),
    (CompletionRequest.parse, {"prompt": [1, True]}, 400, "prompt"),
    (CompletionRequest.parse, {"prompt": "x", "model": "other"}, 404, "model"),
    (CompletionRequest.parse, {"prompt": "x", "n": 2}, 400, "n"),
    (ChatRequest.parse, {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
    (ChatRequest.parse, {"messages": [{"role": "user", "content": "x"}], "stream_options": "yes"}, 400, "stream_options"),
])
def test_a_request_of_the_wrong_shape_is_refused_naming_its_parameter(parse, body, status, param):
    with pytest.raises(APIError) as refused:
        parse(body, model_name="m")
    assert (refused.value.status, refused.value.param) == (status, param)


def test_sampling_parameters_out_of_range_are_refused_naming_them():
    request = CompletionRequest.parse({"prompt": "x", "top_p": 0, "max_tokens": 4}, model_name="m")
    with pytest.raises(APIError) as refused:
        request.sampling_params(default_max_tokens=16)
    assert refused.value.param == "top_p" and "(0, 1]" in refused.value.message
    with pytest.raises(APIError, match="bad sampling parameter"):
        CompletionRequest.parse({"prompt": "x", "temperature": "hot"}, model_name="m")
