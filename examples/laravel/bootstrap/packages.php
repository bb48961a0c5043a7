<?php

/*
 * Without Composer (Debian's Laravel under /usr/share/php, no vendor/ download), this does
 * for the app what `composer install` does for its path repositories: it reads composer.json,
 * finds each required package in a `"type": "path"` repository, autoloads its PSR-4
 * namespaces and lists it in an installed.json, from which Laravel's own package discovery
 * registers its service providers and aliases. Nothing is copied.
 */

use Illuminate\Foundation\PackageManifest;

return function (Illuminate\Foundation\Application $app, string $storage): void {
    $composer = json_decode(file_get_contents($app->basePath('composer.json')), true);
    $installed = [];
    foreach ($composer['repositories'] ?? [] as $repository) {
        if (($repository['type'] ?? null) !== 'path') {
            continue;
        }
        $dir = realpath($app->basePath($repository['url']));
        $package = $dir ? json_decode(file_get_contents("$dir/composer.json"), true) : null;
        if (! $package || ! isset($composer['require'][$package['name']])) {
            continue;
        }
        foreach ($package['autoload']['psr-4'] ?? [] as $prefix => $path) {
            $base = $dir.'/'.trim($path, '/').'/';
            spl_autoload_register(function (string $class) use ($prefix, $base): void {
                if (strncmp($class, $prefix, strlen($prefix)) === 0) {
                    $file = $base.str_replace('\\', '/', substr($class, strlen($prefix))).'.php';
                    if (is_file($file)) {
                        require $file;
                    }
                }
            });
        }
        $installed[] = ['name' => $package['name'], 'extra' => $package['extra'] ?? []];
    }

    // Laravel discovers packages from vendor/composer/installed.json: write ours where it
    // looks, and forget the discovered manifest when the list changed.
    $vendor = "$storage/framework/vendor";
    $list = json_encode(['packages' => $installed], JSON_PRETTY_PRINT);
    is_dir("$vendor/composer") || mkdir("$vendor/composer", 0775, true);
    if (! is_file("$vendor/composer/installed.json") || file_get_contents("$vendor/composer/installed.json") !== $list) {
        file_put_contents("$vendor/composer/installed.json", $list);
        @unlink($app->getCachedPackagesPath());
    }
    $app->afterResolving(PackageManifest::class, function (PackageManifest $manifest) use ($vendor) {
        $manifest->vendorPath = $vendor;
    });
};
