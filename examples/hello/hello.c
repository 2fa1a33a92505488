/* The demo workload: a static hello-world mapped to /usr/bin/hello. */
#include <stdio.h>

int main(void) {
    puts("Hello from a Fledge initramfs!");
    return 0;
}
