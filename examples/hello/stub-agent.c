/* A stand-in for the kestrel agent so the demo needs no download: it runs /usr/bin/hello. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    puts("stub agent: starting /usr/bin/hello");
    fflush(stdout);
    execl("/usr/bin/hello", "hello", (char *)NULL);
    perror("stub agent: exec /usr/bin/hello");
    return 127;
}
