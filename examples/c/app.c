/* A traced C program: see README ("C producers").
 *   hypertrace gen-c trace-events -o trace.h
 *   cc -O2 -o app app.c $(hypertrace c-config --cflags --libs)
 *   hypertrace record -o trace -- ./app && babeltrace2 trace
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "trace.h"

static void *worker(void *arg)
{
    uint64_t t = (uint64_t)(uintptr_t)arg;
    uint64_t t0 = ht_clock_ns();
    for (uint64_t i = 0; i < 1000; i++)
        trace_app_work(t, i, i % 2 ? "odd" : "even");
    trace_app_done(t, (double)(ht_clock_ns() - t0) / 1e9);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    pthread_t th[64];
    if (n < 1 || n > 64)
        n = 4;
    trace_app_start(n);
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    printf("done (tracing %s)\n", trace_app_start_enabled() ? "on" : "off");
    return 0;
}
