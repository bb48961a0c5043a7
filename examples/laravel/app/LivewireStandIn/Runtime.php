<?php

namespace App\LivewireStandIn;

use Illuminate\Http\Request;
use Illuminate\Support\Str;
use ReflectionClass;
use ReflectionMethod;
use ReflectionProperty;

/**
 * Stands in for Livewire, which cannot be installed here, so the example can run components
 * that use runwire's `RefreshesOnRunwire` trait exactly as Livewire would: it mounts a
 * component, renders it with `wire:id`, its public state (signed with the app key, as
 * Livewire's checksum does) and the `listeners` effect, and serves calls from the browser
 * (public/js/livewire-stand-in.js) — `__dispatch` of a listener mapped through
 * `getListeners()` as Livewire's SupportEvents does, `$refresh`, public methods — answering
 * the new HTML unless the component skipped rendering, and its dispatched browser events.
 * It is the example's stand-in, not a Livewire: nothing beyond what the example uses.
 */
class Runtime
{
    /** The component's first render, as the page embeds it. */
    public static function mount(string $class, array $params): string
    {
        $component = new $class();
        foreach ($params as $name => $value) {
            $component->{$name} = $value;
        }
        $component->standIn(Str::random(20));
        $listeners = array_values(array_map(
            fn ($event, $method) => is_numeric($event) ? $method : $event,
            array_keys(self::listeners($component)),
            self::listeners($component),
        ));
        $html = self::render($component);
        $component->standIn();

        return sprintf(
            '<div wire:id="%s" wire:snapshot="%s" wire:effects="%s">%s</div>',
            e($component->getId()),
            e(json_encode(self::snapshot($component))),
            e(json_encode(['listeners' => $listeners])),
            $html,
        );
    }

    /** POST /livewire-stand-in/update: `{snapshot, calls: [{method, params}]}`. */
    public function update(Request $request)
    {
        $component = self::hydrate((array) $request->input('snapshot'));
        foreach ((array) $request->input('calls', []) as $call) {
            $method = (string) ($call['method'] ?? '');
            $params = array_values((array) ($call['params'] ?? []));
            if ($method === '__dispatch') {
                [$event, $eventParams] = $params + [null, []];
                $method = self::listeners($component)[$event] ?? abort(404, 'no listener for '.$event);
                $params = array_values((array) $eventParams);
            }
            if ($method === '$refresh') {
                continue;
            }
            abort_unless(self::callable($component, $method), 404, 'no such action');
            $component->{$method}(...$params);
        }
        $html = self::render($component);
        $effects = $component->standIn();

        return response()->json([
            'html' => $effects['skipRender'] ? null : $html,
            'snapshot' => self::snapshot($component),
            'dispatches' => $effects['dispatches'],
        ]);
    }

    private static function render(Component $component): string
    {
        return $component->render()->with(self::data($component))->render();
    }

    /** `getListeners()` as Livewire reads it (it may be protected). */
    private static function listeners(Component $component): array
    {
        $listeners = (fn () => $this->getListeners())->call($component);
        $named = [];
        foreach ($listeners as $event => $method) {
            $named[is_numeric($event) ? $method : $event] = $method;
        }

        return $named;
    }

    private static function callable(Component $component, string $method): bool
    {
        if (! method_exists($component, $method) || str_starts_with($method, '__')) {
            return false;
        }
        $reflection = new ReflectionMethod($component, $method);

        return $reflection->isPublic() && ! $reflection->isStatic()
            && $reflection->getDeclaringClass()->getName() !== Component::class;
    }

    private static function data(Component $component): array
    {
        $data = [];
        foreach ((new ReflectionClass($component))->getProperties(ReflectionProperty::IS_PUBLIC) as $property) {
            if (! $property->isStatic()) {
                $data[$property->getName()] = $property->getValue($component);
            }
        }

        return $data;
    }

    private static function snapshot(Component $component): array
    {
        $snapshot = ['class' => get_class($component), 'id' => $component->getId(), 'data' => self::data($component)];
        $snapshot['checksum'] = hash_hmac('sha256', json_encode($snapshot), (string) config('app.key'));

        return $snapshot;
    }

    private static function hydrate(array $snapshot): Component
    {
        $checksum = (string) ($snapshot['checksum'] ?? '');
        unset($snapshot['checksum']);
        $expected = hash_hmac('sha256', json_encode($snapshot), (string) config('app.key'));
        abort_unless(hash_equals($expected, $checksum) && is_subclass_of($snapshot['class'], Component::class), 419, 'the snapshot was tampered with');
        $component = new $snapshot['class']();
        foreach ($snapshot['data'] as $name => $value) {
            $component->{$name} = $value;
        }
        $component->standIn($snapshot['id']);

        return $component;
    }
}
