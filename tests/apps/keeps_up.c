/* The C producer of issue 14's tests and benchmarks/bench_keeps_up.py:
   keeps_up rate RATE SECONDS   a sustained rate, capped (no catch-up bursts)
   keeps_up burst THREADS N     THREADS threads x N events at full speed
   Built with trace.h from "ku_tick(uint64_t i, uint64_t who)". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "trace.h"

static uint64_t now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint64_t n_per;

static void *burst(void *arg)
{
    uint64_t who = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < n_per; i++)
        trace_ku_tick(i, who);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "rate") == 0) {
        /* a sustained rate: chunks of 5000 events, one per 5000/rate s; a producer that
           fell behind (descheduled) does not catch up in a burst: the rate is a cap */
        double rate = atof(argv[2]);
        uint64_t n = (uint64_t)(rate * atof(argv[3])), i = 0, due = now();
        const uint64_t chunk = 5000, period = (uint64_t)(chunk * 1e9 / rate);
        while (i < n) {
            uint64_t t;
            while ((t = now()) < due) {
            }
            if (t > due + 2 * period)
                due = t;
            due += period;
            for (uint64_t k = 0; k < chunk && i < n; k++, i++)
                trace_ku_tick(i, 0);
        }
        printf("EMITTED %llu\n", (unsigned long long)n);
        return 0;
    }
    int nt = atoi(argv[2]);
    n_per = strtoull(argv[3], NULL, 10);
    pthread_t th[64];
    for (int t = 0; t < nt && t < 64; t++)
        pthread_create(&th[t], NULL, burst, (void *)(uintptr_t)(t + 1));
    for (int t = 0; t < nt && t < 64; t++)
        pthread_join(th[t], NULL);
    printf("EMITTED %llu\n", (unsigned long long)(n_per * (uint64_t)nt));
    return 0;
}
