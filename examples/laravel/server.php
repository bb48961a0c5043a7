<?php

// The router for PHP's built-in server (`php -S 127.0.0.1:8000 -t public server.php`), as
// Laravel's own: files under public/ are served as they are, everything else by the app.
$uri = urldecode(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?? '/');
if ($uri !== '/' && is_file(__DIR__.'/public'.$uri)) {
    return false;
}

require_once __DIR__.'/public/index.php';
