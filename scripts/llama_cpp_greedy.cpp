// Greedy decoding with llama.cpp's C API, to check that an `autoq export` GGUF runs there:
//   llama_cpp_greedy MODEL.gguf N_NEW "PROMPT"
// prints "prompt <ids>" (llama.cpp's own tokenization, special tokens parsed) and
// "new <ids>" (greedy, stops at end of generation). Built by scripts/build_llama_cpp.sh.
#include "llama_cpp_common.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_NEW PROMPT\n", argv[0]);
        return 2;
    }
    const int n_new = atoi(argv[2]);
    const std::string prompt = argv[3];
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    // no AMX / CPU_REPACK buffers: on AMX CPUs their matmul segfaults on any batch > 1
    // (the prompt; ggml-org/llama.cpp#20824)
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) {
        fprintf(stderr, "error: llama.cpp could not load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens = prompt_tokens(vocab, prompt);
    const int n = tokens.size();
    llama_context * ctx = greedy_context(model, n, n_new, 2);
    llama_sampler * greedy = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(greedy, llama_sampler_init_greedy());

    printf("prompt");
    for (llama_token t : tokens) printf(" %d", t);
    printf("\nnew");
    llama_token next = 0;
    llama_batch batch = llama_batch_get_one(tokens.data(), tokens.size());
    for (int i = 0; i < n_new; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "error: llama_decode failed\n");
            return 1;
        }
        next = llama_sampler_sample(greedy, ctx, -1);
        printf(" %d", next);
        if (llama_vocab_is_eog(vocab, next)) break;
        batch = llama_batch_get_one(&next, 1);
    }
    printf("\n");
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
