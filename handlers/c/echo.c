/*
 * echo.c - an example jobpipe handler (persistent mode) in C, speaking the
 * line protocol of docs/handler-protocol.md directly, with no helper and
 * no library beyond libc. It answers every job with its input unchanged,
 * so it costs next to nothing per job: benchmarks use it to measure
 * jobpipe itself rather than an interpreter.
 *
 *   {"ready": true}                        once, at start
 *   {"id": ID, "output": INPUT}            for every job line
 *   {"id": ID, "error": "MSG"}             when INPUT is an object whose
 *                                          first key is "fail" with a string
 *
 * Build:  gcc -O2 -Wall -o echo handlers/c/echo.c
 * Run:    jobpipe --test-input '{"input": 1}' -- ./echo
 *
 * The job line is not parsed into a tree: the top-level "id" and "input"
 * values are located by a small scanner and copied byte for byte, which
 * keeps the output exactly the JSON the job carried.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* A span of the input line. */
struct span {
    const char *start;
    size_t len;
};

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Returns the end of the string starting at p (which is '"'), or NULL. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* Returns the end of the JSON value starting at p, or NULL if malformed. */
static const char *skip_value(const char *p, const char *end)
{
    int depth = 0;
    p = skip_space(p, end);
    if (p >= end)
        return NULL;
    do {
        if (p >= end)
            return NULL;
        if (*p == '"') {
            p = skip_string(p, end);
            if (p == NULL)
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        else if (depth == 0) {
            /* A number or literal: runs to the next delimiter. */
            while (p < end && strchr(",}] \t\r\n", *p) == NULL)
                p++;
            return p;
        }
        p++;
    } while (depth > 0);
    return depth == 0 ? p : NULL;
}

/*
 * Finds the values of the top-level keys "id" and "input" of the object in
 * [p, end). Returns 0 on success, -1 if the line is not a JSON object.
 */
static int find_fields(const char *p, const char *end, struct span *id, struct span *input)
{
    p = skip_space(p, end);
    if (p >= end || *p != '{')
        return -1;
    p = skip_space(p + 1, end);
    while (p < end && *p != '}') {
        const char *key = p, *key_end, *value;
        if (*p != '"' || (key_end = skip_string(p, end)) == NULL)
            return -1;
        p = skip_space(key_end, end);
        if (p >= end || *p != ':')
            return -1;
        value = skip_space(p + 1, end);
        p = skip_value(value, end);
        if (p == NULL)
            return -1;
        if (key_end - key == 4 && memcmp(key, "\"id\"", 4) == 0) {
            id->start = value;
            id->len = (size_t)(p - value);
        } else if (key_end - key == 7 && memcmp(key, "\"input\"", 7) == 0) {
            input->start = value;
            input->len = (size_t)(p - value);
        }
        p = skip_space(p, end);
        if (p < end && *p == ',')
            p = skip_space(p + 1, end);
    }
    return p < end ? 0 : -1;
}

/* If input is an object whose first key is "fail" with a string value,
 * returns that string (quotes included). */
static int fail_message(struct span input, struct span *message)
{
    const char *p = input.start, *end = input.start + input.len, *value;
    p = skip_space(p, end);
    if (p >= end || *p != '{')
        return 0;
    p = skip_space(p + 1, end);
    if ((size_t)(end - p) < 6 || memcmp(p, "\"fail\"", 6) != 0)
        return 0;
    p = skip_space(p + 6, end);
    if (p >= end || *p != ':')
        return 0;
    value = skip_space(p + 1, end);
    if (value >= end || *value != '"' || (p = skip_string(value, end)) == NULL)
        return 0;
    message->start = value;
    message->len = (size_t)(p - value);
    return 1;
}

static void answer(struct span id, const char *key, struct span value)
{
    fputs("{\"id\":", stdout);
    fwrite(id.start, 1, id.len, stdout);
    fprintf(stdout, ",\"%s\":", key);
    fwrite(value.start, 1, value.len, stdout);
    fputs("}\n", stdout);
}

static void handle(const char *line, size_t len)
{
    struct span id = {NULL, 0}, input = {NULL, 0}, message;
    const char *end = line + len;
    if (find_fields(line, end, &id, &input) != 0) {
        fprintf(stderr, "echo.c: ignoring a line that is not a JSON object\n");
        return;
    }
    if (id.start == NULL) {
        fprintf(stderr, "echo.c: ignoring an object without an \"id\"\n");
        return;
    }
    if (input.start == NULL) {
        /* A cancel line, or a job without input; this handler runs one job
         * at a time, so a cancel has nothing left to stop. */
        if (strstr(line, "\"cancel\"") == NULL) {
            static const char missing[] = "\"malformed job: missing \\\"input\\\"\"";
            struct span text = {missing, sizeof missing - 1};
            answer(id, "error", text);
        }
        return;
    }
    if (fail_message(input, &message))
        answer(id, "error", message);
    else
        answer(id, "output", input);
}

int main(void)
{
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;

    fputs("{\"ready\": true}\n", stdout);
    fflush(stdout);
    while ((len = getline(&line, &capacity, stdin)) != -1) {
        handle(line, (size_t)len);
        if (fflush(stdout) != 0)
            break; /* jobpipe is gone */
    }
    free(line);
    return 0;
}
