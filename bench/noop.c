/* noop: a statically linked program that does nothing (exit 0).  The helper's
 * peak RSS is measured by running it through cgnetns-exec: the peak of one
 * process across exec is the larger of the two images, and this one is tiny.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time.
 */
int main(void)
{
	return 0;
}
