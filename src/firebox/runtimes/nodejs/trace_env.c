// putenv(3) for the Node.js runtime (bootstrap.mjs), as a Node-API addon: `putenv(buffer)`
// makes the process's environment entry for the name in `buffer` ("NAME=value\0") point INTO
// that Buffer's memory, copying nothing.
//
// Why: Node.js can set an environment variable only through `process.env`, that is setenv(3),
// and glibc's setenv keeps a copy of every distinct value it was ever given, for good. The
// runtime sets `_X_AMZN_TRACE_ID` for every invocation, to a new value each time: a warm
// sandbox grew by ~110 bytes per invocation (bench/warm_memory.py). With this, the runtime
// keeps the variable in one Buffer of its own, rewrites it in place, and process.env (which
// reads the environment through getenv), children and native code all see the value.
//
// The addon holds a reference to every Buffer it was given, for good: the environment may point
// into it as long as the process lives, so it must never be collected (a JavaScript caller that
// dropped it would leave the environment pointing at freed memory: seen in a test, the variable
// vanished after a gc()). A Buffer's memory never moves. The runtime makes a new Buffer only when
// a value outgrows the last one (doubling), so a few are ever held; past MAX_BUFFERS, refused.
// Built by bin/setup (gcc, Node's headers); without it the runtime falls back to process.env.
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUFFERS 64

static void *held[MAX_BUFFERS];  // the memory of each Buffer referenced below
static size_t held_count;

// Keep the Buffer whose memory is `data` alive for good (a strong reference never released).
static bool hold(napi_env env, napi_value buffer, void *data) {
    for (size_t i = 0; i < held_count; i++) {
        if (held[i] == data) return true;
    }
    napi_ref reference;
    if (held_count == MAX_BUFFERS || napi_create_reference(env, buffer, 1, &reference) != napi_ok) return false;
    held[held_count++] = data;
    return true;
}

static napi_value put_env(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    void *data = NULL;
    size_t length = 0;
    bool is_buffer = false;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1
        || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer
        || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok
        || length == 0 || memchr(data, '\0', length) == NULL || memchr(data, '=', length) == NULL) {
        napi_throw_type_error(env, NULL, "putenv takes a Buffer holding NAME=value and a NUL");
        return NULL;
    }
    if (!hold(env, argv[0], data)) {
        napi_throw_error(env, NULL, "putenv: too many Buffers given");
        return NULL;
    }
    napi_value result;
    napi_create_int32(env, putenv((char *)data), &result);
    return result;
}

NAPI_MODULE_INIT() {
    napi_value function;
    if (napi_create_function(env, "putenv", NAPI_AUTO_LENGTH, put_env, NULL, &function) != napi_ok
        || napi_set_named_property(env, exports, "putenv", function) != napi_ok) {
        return NULL;
    }
    return exports;
}
